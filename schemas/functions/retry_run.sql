-- Starts a new run of an ended run's flow version with its input, linked by retry_of.
-- Errors: SQLSTATE P0002 when there is no such run, 22023 when it is still running.
CREATE OR REPLACE FUNCTION flowreg.retry_run(p_run uuid)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
  v_run flowreg.runs;
  v_new uuid;
BEGIN
  SELECT * INTO v_run FROM flowreg.runs WHERE id = p_run;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('run %s does not exist', p_run);
  END IF;
  IF v_run.status = 'started' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = format('run %s is still running: cancel it before retrying it', p_run);
  END IF;
  SELECT s.run_id INTO v_new
  FROM flowreg.start_runs(v_run.flow_slug, v_run.flow_version, ARRAY[v_run.input], NULL, p_run) s;
  -- A run started with a priority is retried with it (migration 0022).
  IF v_run.priority IS NOT NULL THEN
    PERFORM flowreg.prioritize_runs(ARRAY[v_new], v_run.priority);
  END IF;
  RETURN v_new;
END $$;

-- Sequential scans off, as in the functions it calls: a plan made while the tables were small
-- and analyzed so must not read them whole once they are not (tests/pg/hot_path_test.cpp).
ALTER FUNCTION flowreg.retry_run(uuid) SET enable_seqscan = off SET jit = off;
