-- Records task failures. p_batch: [{"id", "attempt", "error", "permanent"}].
-- Returns the ids rejected (attempt no longer current, or the task is not started).
CREATE OR REPLACE FUNCTION flowreg.fail_tasks(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_acc bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  PERFORM flowreg._lock_runs_of(v_ids);
  v_acc := flowreg._fail_locked(p_batch);
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (v_acc) ORDER BY 1);
END $$;
