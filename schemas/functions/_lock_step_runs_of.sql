-- Locks (by id, waiting) the runs of the given tasks that are not solo (their runs keep step
-- states): the first step of every writer of such a task's result, so that runs are locked before
-- their tasks and step states (no deadlock). A solo task (a one-step flow's, migration 0013) is
-- locked before its run instead, and a completion needs no lock for it: its DELETE locks the task
-- and its run's UPDATE the run, one lock record fewer per run (see README, lock order).
-- Kept on one generic plan per session, walking primary keys (see _claim).
CREATE OR REPLACE FUNCTION flowreg._lock_step_runs_of(p_ids bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  -- PERFORM runs the query to the end (a SQL function would stop at the first row).
  -- The arrays (rather than joins) keep the plans on the primary keys whatever the statistics.
  PERFORM 1 FROM flowreg.runs r
  WHERE r.id = ANY (ARRAY(SELECT t.run_id FROM flowreg.tasks t
                          WHERE t.id = ANY (p_ids) AND NOT t.solo))
  ORDER BY r.id FOR UPDATE OF r;
END $$;

ALTER FUNCTION flowreg._lock_step_runs_of(bigint[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
