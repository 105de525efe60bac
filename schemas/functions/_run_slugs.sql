-- The flow slugs that have runs, in order. runs_by_flow is keyed by the hash of the slug (migration
-- 0016): a skip scan of it finds the hashes that have runs, with the slug of the first run of each
-- (one probe per hash, whatever the number of runs: a recursive query), and the stored flow slugs
-- of those hashes join them, so that two slugs sharing a hash are both given: the stored slugs are
-- found by a skip scan of flows_pkey too (one probe per slug, whatever the number of its versions;
-- reading the index whole read every version ever stored). Runs has no index on created_at alone
-- (migration 0015): readers of every flow's runs (prune, RunStore's lists of runs and metrics) read
-- them one flow at a time, through runs_by_flow, for the slugs given here. Sequential scans are
-- off: a probe is an index probe whatever the statistics say (a scan of runs that stops at the
-- first row of a hash is cheap only while that hash has most of the runs); bitmap scans too, since
-- a bitmap scan of runs_by_flow would read every run above a hash before the first.
CREATE OR REPLACE FUNCTION flowreg._run_slugs()
RETURNS SETOF text LANGUAGE sql STABLE AS $$
  WITH RECURSIVE keys(k, slug) AS (
    (SELECT hashtextextended(flow_slug, 0), flow_slug FROM flowreg.runs ORDER BY 1 LIMIT 1)
    UNION ALL
    SELECT n.k, n.slug
    FROM keys s CROSS JOIN LATERAL (
      SELECT hashtextextended(r.flow_slug, 0) AS k, r.flow_slug AS slug FROM flowreg.runs r
      WHERE hashtextextended(r.flow_slug, 0) > s.k ORDER BY 1 LIMIT 1) n
  ),
  stored(slug) AS (
    (SELECT slug FROM flowreg.flows ORDER BY slug LIMIT 1)
    UNION ALL
    SELECT n.slug
    FROM stored s CROSS JOIN LATERAL (
      SELECT f.slug FROM flowreg.flows f WHERE f.slug > s.slug ORDER BY f.slug LIMIT 1) n
  )
  SELECT slug FROM keys
  UNION
  SELECT f.slug FROM stored f
  WHERE hashtextextended(f.slug, 0) IN (SELECT k FROM keys)
  ORDER BY 1
$$;

ALTER FUNCTION flowreg._run_slugs()
  SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
