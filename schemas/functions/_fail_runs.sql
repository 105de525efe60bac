-- Fails the given runs (still started) with the given errors (the first per run wins): their tasks
-- leave the queue (_drop_tasks), their unfinished steps are cancelled, and they are announced on
-- flowreg_runs. REQUIRES: the runs are locked (so the set of those still started cannot change).
-- The step states are found by `run_id = ANY (ids)`, a condition of step_states_pkey whatever the
-- plan: as `run_id IN (SELECT id FROM r)`, a plan made on small tables walked all of
-- step_states_pkey as the outer side of the join (tests/pg/hot_path_test.cpp reads the plans).
CREATE OR REPLACE FUNCTION flowreg._fail_runs(p_runs uuid[], p_errors text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_n bigint;
  v_started uuid[];
BEGIN
  SELECT array_agg(r.id) INTO v_started FROM flowreg.runs r
  WHERE r.id = ANY (p_runs) AND r.status = 'started';
  IF v_started IS NULL THEN
    RETURN;
  END IF;
  -- Tasks before step states, as every writer does (runs, tasks, step states).
  PERFORM flowreg._drop_tasks(v_started);
  WITH f AS (
    SELECT DISTINCT ON (run_id) run_id, error
    FROM unnest(p_runs, p_errors) WITH ORDINALITY AS x(run_id, error, i) ORDER BY run_id, i
  ),
  r AS (
    UPDATE flowreg.runs r SET status = 'failed', error = f.error, finished_at = now()
    FROM f WHERE r.id = ANY (v_started) AND r.id = f.run_id
    RETURNING r.id
  ),
  s AS (
    UPDATE flowreg.step_states SET status = 'cancelled', finished_at = now()
    WHERE run_id = ANY (ARRAY(SELECT id FROM r)) AND status IN ('created', 'started')
  )
  SELECT count(pg_notify('flowreg_runs', id::text || ' failed')) INTO v_n FROM r;
END $$;

ALTER FUNCTION flowreg._fail_runs(uuid[], text[]) SET jit = off;
