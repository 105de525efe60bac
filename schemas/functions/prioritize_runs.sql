-- Gives the runs p_runs (just started in this transaction: a start with a priority, RunStore's
-- start_run and start_runs, or retry_run of a run that had one) the priority p_priority
-- (migration 0022): the run keeps it (runs.priority), for the tasks its later steps create, and
-- its queued tasks take it now (a solo task named by its run's task_id, through tasks_pkey; the
-- others through tasks_by_run, `NOT t.solo`). The level is added to the flow versions' levels
-- first, so that a claim walks it. Returns the number of runs given the priority. Never on the
-- hot path: a start without a priority does not call it.
CREATE OR REPLACE FUNCTION flowreg.prioritize_runs(p_runs uuid[], p_priority int)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_n bigint;
BEGIN
  INSERT INTO flowreg.queue_levels (flow_slug, flow_version, priority)
  SELECT DISTINCT r.flow_slug, r.flow_version, p_priority
  FROM flowreg.runs r WHERE r.id = ANY (p_runs)
  ON CONFLICT DO NOTHING;
  WITH r AS (
    UPDATE flowreg.runs SET priority = p_priority
    WHERE id = ANY (p_runs) AND status = 'started'
    RETURNING id, task_id),
  solo AS (
    UPDATE flowreg.tasks t SET priority = p_priority FROM r
    WHERE t.id = ANY (ARRAY[r.task_id]) AND t.run_id = r.id AND t.status = 'queued'),
  other AS (
    UPDATE flowreg.tasks t SET priority = p_priority FROM r
    WHERE t.run_id = ANY (ARRAY[r.id]) AND NOT t.solo AND t.status = 'queued')
  SELECT count(*) INTO v_n FROM r;
  RETURN v_n;
END $$;

-- Plans stable by construction: primary keys and tasks_by_run, driven by the runs given.
ALTER FUNCTION flowreg.prioritize_runs(uuid[], int)
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
