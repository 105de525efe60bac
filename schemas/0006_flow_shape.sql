-- flowreg migration 0006: a flow version's shape ignores the order its steps and dependencies are
-- written in.
--
-- A version is a hash of the steps, kinds, dependencies and handlers that does not depend on the
-- order in which steps and dependencies are written. upsert_flow compares the shape of a version
-- stored again with the stored one; that comparison followed the written order, so the same flow
-- written in another valid order (two independent steps swapped, or depends_on [a, b] written as
-- [b, a]) was refused as "already stored with a different definition". The shape is now the steps
-- sorted by slug, each with its dependencies sorted.

CREATE OR REPLACE FUNCTION flowreg._flow_shape(p_def jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(jsonb_agg(
           (s - 'options' - 'depends_on')
             || jsonb_build_object('depends_on',
                  (SELECT coalesce(jsonb_agg(d ORDER BY d), '[]'::jsonb)
                   FROM jsonb_array_elements_text(coalesce(s->'depends_on', '[]'::jsonb)) AS d))
           ORDER BY s->>'slug'), '[]'::jsonb)
  FROM jsonb_array_elements(p_def->'steps') AS x(s);
$$;
