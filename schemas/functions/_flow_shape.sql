-- A flow version's shape: its steps without their options, concurrency and rate limits
-- (migrations 0023, 0024), sorted by slug, each with its dependencies sorted, so that the order in
-- which steps and dependencies are written does not matter.
CREATE OR REPLACE FUNCTION flowreg._flow_shape(p_def jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(jsonb_agg(
           (s - 'options' - 'concurrency' - 'rate_limit' - 'depends_on')
             || jsonb_build_object('depends_on',
                  (SELECT coalesce(jsonb_agg(d ORDER BY d), '[]'::jsonb)
                   FROM jsonb_array_elements_text(coalesce(s->'depends_on', '[]'::jsonb)) AS d))
           ORDER BY s->>'slug'), '[]'::jsonb)
  FROM jsonb_array_elements(p_def->'steps') AS x(s);
$$;
