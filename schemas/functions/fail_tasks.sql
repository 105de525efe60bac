-- Records task failures. p_batch: [{"id", "attempt", "error", "permanent"}].
-- Returns the ids rejected (attempt no longer current, or the task is not started).
CREATE OR REPLACE FUNCTION flowreg.fail_tasks(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  IF v_ids IS NULL THEN
    RETURN '{}';
  END IF;
  PERFORM flowreg._lock_runs_of(v_ids);
  RETURN flowreg._rejected(v_ids, flowreg._fail_locked(p_batch));
END $$;

ALTER FUNCTION flowreg.fail_tasks(jsonb) SET jit = off;
