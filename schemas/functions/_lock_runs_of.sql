-- Locks (by id, waiting) the runs of the given tasks: the first step of every writer of a task's
-- result, so that runs are always locked before tasks and step states (no deadlock).
-- Kept on one generic plan per session, walking primary keys (see _claim).
CREATE OR REPLACE FUNCTION flowreg._lock_runs_of(p_ids bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  -- PERFORM runs the query to the end (a SQL function would stop at the first row).
  -- The arrays (rather than joins) keep the plans on the primary keys whatever the statistics.
  PERFORM 1 FROM flowreg.runs r
  WHERE r.id = ANY (ARRAY(SELECT t.run_id FROM flowreg.tasks t WHERE t.id = ANY (p_ids)))
  ORDER BY r.id FOR UPDATE OF r;
END $$;

ALTER FUNCTION flowreg._lock_runs_of(bigint[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
