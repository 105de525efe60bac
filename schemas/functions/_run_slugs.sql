-- The flow slugs that have runs, in order, by a skip scan of runs_by_flow: one probe per slug,
-- whatever the number of runs (a recursive query). Runs has no index on created_at alone
-- (migration 0015): readers of every flow's runs (prune, RunStore's lists of runs and metrics)
-- read them one flow at a time, through runs_by_flow, for the slugs given here.
CREATE OR REPLACE FUNCTION flowreg._run_slugs()
RETURNS SETOF text LANGUAGE sql STABLE AS $$
  WITH RECURSIVE slugs(slug) AS (
    (SELECT flow_slug FROM flowreg.runs ORDER BY flow_slug LIMIT 1)
    UNION ALL
    SELECT (SELECT r.flow_slug FROM flowreg.runs r WHERE r.flow_slug > s.slug
            ORDER BY r.flow_slug LIMIT 1)
    FROM slugs s WHERE s.slug IS NOT NULL
  )
  SELECT slug FROM slugs WHERE slug IS NOT NULL
$$;

ALTER FUNCTION flowreg._run_slugs() SET jit = off;
