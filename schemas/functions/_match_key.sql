-- The key under which a wait step on an event waits, and under which an event finds it (migration
-- 0026): an md5 of the match's event pointers with the values read at p_side's paths of p_doc
-- ("run": the step's input, when it starts to wait; "event": an event's data). NULL when a value
-- is missing (a wait step then fails its run; an event matches no run of that match). A match of
-- no pair has one key: every run waiting for the event.
-- Values compare as their jsonb text: 1 and 1.0 differ, key order in objects does not.
CREATE OR REPLACE FUNCTION flowreg._match_key(p_match jsonb, p_doc jsonb, p_side text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN count(*) = 0 THEN md5('[]')
              WHEN count(v) = count(*)
                THEN md5(jsonb_agg(jsonb_build_array(m->>'at', v) ORDER BY i)::text) END
  FROM jsonb_array_elements(coalesce(p_match, '[]'::jsonb)) WITH ORDINALITY AS x(m, i)
  CROSS JOIN LATERAL (SELECT p_doc #> ARRAY(SELECT jsonb_array_elements_text(m->p_side)) AS v) y
$$;

ALTER FUNCTION flowreg._match_key(jsonb, jsonb, text) SET jit = off;
