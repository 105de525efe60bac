-- Records task completions. p_batch: [{"id", "attempt", "output"}]. A step whose last task
-- completed is complete, with its output (a single step's: its one task's; a map step's: its
-- tasks' in task order); then its dependents may start and its run may complete.
-- Returns the ids rejected (attempt no longer current, or the task is not started).
CREATE OR REPLACE FUNCTION flowreg.complete_tasks(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_attempts int[];
  v_outputs jsonb[];
  v_acc bigint[];
  v_truns uuid[];
  v_tsteps text[];
  v_touts jsonb[];
  v_druns uuid[];
  v_dsteps text[];
  v_going uuid[];
BEGIN
  SELECT array_agg(b.id), array_agg(b.attempt), array_agg(coalesce(b.output, 'null'::jsonb))
  INTO v_ids, v_attempts, v_outputs
  FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int, output jsonb);
  IF v_ids IS NULL THEN
    RETURN '{}';
  END IF;
  PERFORM flowreg._lock_runs_of(v_ids);

  WITH done AS (
    UPDATE flowreg.tasks t
    SET status = 'completed', output = b.output, finished_at = now(), lease_expires_at = NULL
    FROM unnest(v_ids, v_attempts, v_outputs) AS b(id, attempt, output)
    WHERE t.id = ANY (v_ids) AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
    RETURNING t.id, t.run_id, t.step_slug, t.output
  )
  SELECT array_agg(id), array_agg(run_id), array_agg(step_slug), array_agg(output)
  INTO v_acc, v_truns, v_tsteps, v_touts
  FROM done;
  IF v_acc IS NULL THEN
    RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i ORDER BY 1);
  END IF;

  -- A step whose last task completed is complete, with its output: a single step's is its one
  -- task's (completed just now), a map step's its tasks' in task order.
  WITH per AS (
    SELECT run_id, step_slug, count(*)::int AS n, (array_agg(output))[1] AS output
    FROM unnest(v_truns, v_tsteps, v_touts) AS x(run_id, step_slug, output) GROUP BY 1, 2
  ),
  upd AS (
    UPDATE flowreg.step_states s
    SET remaining_tasks = s.remaining_tasks - per.n,
        status = CASE WHEN s.remaining_tasks = per.n THEN 'completed' ELSE s.status END,
        finished_at = CASE WHEN s.remaining_tasks = per.n THEN now() END,
        output = CASE WHEN s.remaining_tasks <> per.n THEN NULL
                      WHEN s.kind = 'map' THEN
                        (SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM flowreg.tasks t
                         WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug)
                      ELSE per.output END
    FROM per
    WHERE s.run_id = ANY (v_truns) AND s.run_id = per.run_id AND s.step_slug = per.step_slug
      AND s.status = 'started'
    RETURNING s.run_id, s.step_slug, s.status
  )
  SELECT array_agg(run_id), array_agg(step_slug) INTO v_druns, v_dsteps
  FROM upd WHERE status = 'completed';

  IF v_druns IS NOT NULL THEN
    v_going := flowreg._account_steps(v_druns, v_dsteps);  -- each run once
    IF cardinality(v_going) > 0 THEN
      PERFORM flowreg._start_steps(v_going);
    END IF;
  END IF;
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (v_acc) ORDER BY 1);
END $$;
