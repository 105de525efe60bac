-- Records task completions. p_batch: [{"id", "attempt", "output"}]. A step whose last task
-- completed is complete, with its output (a single step's: its one task's; a map step's: its
-- tasks' in task order); then its dependents may start and its run may complete.
-- Returns the ids rejected (attempt no longer current, or the task is not started).
CREATE OR REPLACE FUNCTION flowreg.complete_tasks(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  IF v_ids IS NULL THEN
    RETURN '{}';
  END IF;
  -- The runs of its tasks that are not solo; a solo task and its run are locked by their writes.
  PERFORM flowreg._lock_step_runs_of(v_ids);
  RETURN flowreg._rejected(v_ids, (flowreg._complete_locked(p_batch)).accepted);
END $$;

ALTER FUNCTION flowreg.complete_tasks(jsonb) SET jit = off;
