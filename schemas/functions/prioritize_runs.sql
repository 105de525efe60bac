-- Gives the runs p_runs (just started in this transaction: a start with a priority, RunStore's
-- start_run and start_runs, or retry_run of a run that had one) the priority p_priority
-- (migration 0022): the run keeps it (runs.priority), for the tasks its later steps create, and
-- its queued tasks take it now (a solo task named by its run's task_id, through tasks_pkey; the
-- others through tasks_by_run, `NOT q.solo`, a probe per run; the status tests are written
-- `status || ''` so that no plan walks tasks_queued instead, as hot_path_test saw one do). The
-- level is added to the flow versions' levels first, so that a claim walks it. Returns the number
-- of runs given the priority. Never on the hot path: a start without a priority does not call it.
CREATE OR REPLACE FUNCTION flowreg.prioritize_runs(p_runs uuid[], p_priority int)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_runs uuid[];
  v_solo bigint[];
BEGIN
  INSERT INTO flowreg.queue_levels (flow_slug, flow_version, priority)
  SELECT DISTINCT r.flow_slug, r.flow_version, p_priority
  FROM flowreg.runs r WHERE r.id = ANY (p_runs)
  ON CONFLICT DO NOTHING;
  WITH r AS (
    UPDATE flowreg.runs SET priority = p_priority
    WHERE id = ANY (p_runs) AND status = 'started'
    RETURNING id, task_id)
  SELECT array_agg(r.id), array_agg(r.task_id) INTO v_runs, v_solo FROM r;
  IF v_runs IS NULL THEN
    RETURN 0;
  END IF;
  -- Solo tasks by primary key; the others by run (tasks_by_run), one probe per run.
  UPDATE flowreg.tasks t SET priority = p_priority
  WHERE t.id = ANY (v_solo) AND t.status || '' = 'queued';
  UPDATE flowreg.tasks t SET priority = p_priority
  WHERE t.id = ANY (ARRAY(SELECT x.id FROM unnest(v_runs) AS rr(id)
                          CROSS JOIN LATERAL (SELECT q.id FROM flowreg.tasks q
                                              WHERE q.run_id = rr.id AND NOT q.solo
                                                AND q.status || '' = 'queued' OFFSET 0) x));
  RETURN cardinality(v_runs);
END $$;

-- Plans stable by construction: primary keys and tasks_by_run, driven by the runs given.
ALTER FUNCTION flowreg.prioritize_runs(uuid[], int)
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
