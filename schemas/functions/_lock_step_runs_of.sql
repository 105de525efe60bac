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
  -- `solo IS NOT TRUE` (solo is NOT NULL: the same rows as NOT solo) does not imply the predicate
  -- of tasks_by_run (NOT solo), so the tasks are probed through tasks_pkey: with `NOT t.solo`, a
  -- plan made while tasks was small walked all of tasks_by_run, filtering it by id.
  PERFORM 1 FROM flowreg.runs r
  WHERE r.id = ANY (ARRAY(SELECT t.run_id FROM flowreg.tasks t
                          WHERE t.id = ANY (p_ids) AND t.solo IS NOT TRUE))
  ORDER BY r.id FOR UPDATE OF r;
END $$;

ALTER FUNCTION flowreg._lock_step_runs_of(bigint[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
