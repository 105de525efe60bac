-- Cancels a started run: its unfinished steps are cancelled (a chain's steps not started have no
-- state: the view shows them cancelled, migration 0017) and its tasks leave the queue (later
-- results of its tasks are rejected). Returns false when the run had already ended,
-- SQLSTATE P0002 when there is no such run.
CREATE OR REPLACE FUNCTION flowreg.cancel_run(p_run uuid)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_status text;
BEGIN
  -- A one-step flow's run: its solo task is locked before it (see README, lock order). The run
  -- keeps its task_id for life, so reading it unlocked is safe.
  PERFORM 1 FROM flowreg.tasks t
  WHERE t.id = (SELECT r.task_id FROM flowreg.runs r WHERE r.id = p_run) AND t.run_id = p_run
  FOR UPDATE OF t;
  SELECT status INTO v_status FROM flowreg.runs WHERE id = p_run FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('run %s does not exist', p_run);
  END IF;
  IF v_status <> 'started' THEN
    RETURN false;
  END IF;
  PERFORM flowreg._drop_tasks(ARRAY[p_run]);
  UPDATE flowreg.step_states SET status = 'cancelled', finished_at = now()
  WHERE run_id = p_run AND status IN ('created', 'started');
  UPDATE flowreg.runs SET status = 'cancelled', finished_at = now(), error = 'cancelled'
  WHERE id = p_run;
  PERFORM pg_notify('flowreg_runs', p_run::text || ' cancelled');
  RETURN true;
END $$;

-- Sequential scans off, as in the functions it calls: a plan made while the tables were small
-- and analyzed so must not read them whole once they are not (tests/pg/hot_path_test.cpp).
ALTER FUNCTION flowreg.cancel_run(uuid) SET enable_seqscan = off SET jit = off;
