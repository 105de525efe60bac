-- Locks (by id, waiting) what a writer of the given tasks' results must hold before writing any
-- of them, in the lock order every writer follows (see README): the runs of the tasks that are not
-- solo, then the solo tasks (a one-step flow's, migration 0013), then their runs. A solo task is
-- locked before its run: a completion deletes it first, then completes its run, with no lock of
-- its own (_lock_step_runs_of).
-- Kept on one generic plan per session, walking primary keys (see _claim).
CREATE OR REPLACE FUNCTION flowreg._lock_runs_of(p_ids bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM flowreg._lock_step_runs_of(p_ids);
  -- PERFORM runs the query to the end (a SQL function would stop at the first row).
  PERFORM 1 FROM flowreg.tasks t WHERE t.id = ANY (p_ids) AND t.solo ORDER BY t.id FOR UPDATE OF t;
  PERFORM 1 FROM flowreg.runs r
  WHERE r.id = ANY (ARRAY(SELECT t.run_id FROM flowreg.tasks t WHERE t.id = ANY (p_ids) AND t.solo))
  ORDER BY r.id FOR UPDATE OF r;
END $$;

ALTER FUNCTION flowreg._lock_runs_of(bigint[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
