-- Fails the given runs (still started) with the given errors (the first per run wins), cancels
-- their unfinished steps, takes their tasks out of the queue (_drop_tasks), and announces them on
-- flowreg_runs.
-- REQUIRES: the runs are locked.
CREATE OR REPLACE FUNCTION flowreg._fail_runs(p_runs uuid[], p_errors text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_n bigint;
  v_failed uuid[];
BEGIN
  WITH f AS (
    SELECT DISTINCT ON (run_id) run_id, error
    FROM unnest(p_runs, p_errors) WITH ORDINALITY AS x(run_id, error, i) ORDER BY run_id, i
  ),
  r AS (
    UPDATE flowreg.runs r SET status = 'failed', error = f.error, finished_at = now()
    FROM f WHERE r.id = ANY (p_runs) AND r.id = f.run_id AND r.status = 'started'
    RETURNING r.id
  ),
  s AS (
    UPDATE flowreg.step_states SET status = 'cancelled', finished_at = now()
    WHERE run_id IN (SELECT id FROM r) AND status IN ('created', 'started')
  )
  SELECT count(pg_notify('flowreg_runs', id::text || ' failed')), array_agg(id)
  INTO v_n, v_failed FROM r;
  IF v_failed IS NOT NULL THEN
    PERFORM flowreg._drop_tasks(v_failed);
  END IF;
END $$;

ALTER FUNCTION flowreg._fail_runs(uuid[], text[]) SET jit = off;
