-- Fails or requeues started tasks whose attempt matches; returns the ids accepted. A task with
-- attempts left (and not failed permanently) is queued again after retry_delay_ms; otherwise its
-- step and run fail. p_batch: [{"id", "attempt", "error", "permanent"}].
-- REQUIRES: the tasks' runs are locked.
CREATE OR REPLACE FUNCTION flowreg._fail_locked(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_acc bigint[];
  v_fail_runs uuid[];
  v_fail_steps text[];
  v_fail_errors text[];
  v_flows text[];
BEGIN
  WITH b AS (
    SELECT * FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int, error text,
                                                   permanent boolean)
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET status = CASE WHEN coalesce(b.permanent, false) OR t.attempt >= t.max_attempts
                      THEN 'failed' ELSE 'queued' END,
        available_at = CASE WHEN coalesce(b.permanent, false) OR t.attempt >= t.max_attempts
                            THEN t.available_at
                            ELSE now() + flowreg.retry_delay_ms(t.base_delay_ms, t.max_delay_ms,
                                                                t.attempt) * interval '1 ms' END,
        finished_at = CASE WHEN coalesce(b.permanent, false) OR t.attempt >= t.max_attempts
                           THEN now() END,
        error = coalesce(b.error, ''), error_at = now(), lease_expires_at = NULL
    FROM b
    WHERE t.id = ANY (ARRAY(SELECT (e->>'id')::bigint FROM jsonb_array_elements(p_batch) e))
      AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
    RETURNING t.id, t.run_id, t.step_slug, t.task_index, t.status, t.error, t.attempt,
              t.flow_slug, t.available_at, coalesce(b.permanent, false) AS permanent
  )
  SELECT array_agg(u.id),
         array_agg(u.run_id) FILTER (WHERE u.status = 'failed'),
         array_agg(u.step_slug) FILTER (WHERE u.status = 'failed'),
         array_agg(format('step %L%s failed %s: %s', u.step_slug,
                          CASE WHEN u.task_index > 0 OR s.kind = 'map'
                               THEN ' task ' || u.task_index ELSE '' END,
                          CASE WHEN u.permanent THEN 'permanently on attempt ' || u.attempt
                               ELSE 'after ' || u.attempt || ' attempt'
                                    || CASE WHEN u.attempt = 1 THEN '' ELSE 's' END END,
                          u.error)) FILTER (WHERE u.status = 'failed'),
         array_agg(DISTINCT u.flow_slug) FILTER (WHERE u.status = 'queued'
                                                  AND u.available_at <= now())
  INTO v_acc, v_fail_runs, v_fail_steps, v_fail_errors, v_flows
  FROM upd u JOIN flowreg.step_states s ON s.run_id = u.run_id AND s.step_slug = u.step_slug;

  IF v_fail_runs IS NOT NULL THEN
    UPDATE flowreg.step_states s SET status = 'failed', error = x.error, finished_at = now()
    FROM (SELECT DISTINCT ON (run_id, step_slug) run_id, step_slug, error
          FROM unnest(v_fail_runs, v_fail_steps, v_fail_errors) AS y(run_id, step_slug, error)) x
    WHERE s.run_id = x.run_id AND s.step_slug = x.step_slug AND s.status = 'started';
    PERFORM flowreg._fail_runs(v_fail_runs, v_fail_errors);
  END IF;
  IF v_flows IS NOT NULL THEN
    PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
  END IF;
  RETURN coalesce(v_acc, '{}');
END $$;
