-- Graceful shutdown: gives back tasks p_worker holds. p_batch: [{"id", "attempt", "ran"}]; ran =
-- false: the handler never started (the attempt is refunded, the task requeued at once); ran =
-- true: the handler was interrupted (requeued at once when attempts remain, else the lease is
-- expired now and the next claim fails the step; either way the attempt is kept in
-- task_attempts, interrupted: migration 0019). Other workers are notified. Returns the ids
-- released. The status test is written `status || '' = 'started'`, as renew_leases', so that no
-- plan reads tasks_leased whole; sequential scans, hash and merge joins are off, as in the other
-- functions of the lifecycle.
CREATE OR REPLACE FUNCTION flowreg.release_tasks(p_worker text, p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_acc bigint[];
  v_flows text[];
BEGIN
  WITH b AS (
    -- last: the attempt is its task's last (its step's max_attempts, migration 0014; a task whose
    -- step is gone has no attempt left).
    SELECT j.*, j.attempt >= coalesce((SELECT fs.max_attempts FROM flowreg.flow_steps fs
                                       WHERE fs.flow_slug = k.flow_slug
                                         AND fs.version = k.flow_version
                                         AND fs.step_slug = k.step_slug), 0) AS last
    FROM jsonb_to_recordset(p_batch) AS j(id bigint, attempt int, ran boolean)
    LEFT JOIN flowreg.tasks k ON k.id = ANY (ARRAY[j.id])
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET status = CASE WHEN b.ran AND b.last THEN 'started' ELSE 'queued' END,
        attempt = CASE WHEN b.ran THEN t.attempt ELSE t.attempt - 1 END,
        available_at = CASE WHEN b.ran AND b.last THEN t.available_at ELSE now() END,
        lease_expires_at = CASE WHEN b.ran AND b.last THEN now() - interval '1 ms' END,
        error = CASE WHEN b.ran THEN format('interrupted: worker %s shut down while the handler '
                                            'ran', p_worker) ELSE t.error END,
        error_at = CASE WHEN b.ran THEN now() ELSE t.error_at END
    FROM b
    WHERE t.id = ANY (ARRAY(SELECT (e->>'id')::bigint FROM jsonb_array_elements(p_batch) e))
      AND t.id = b.id AND t.attempt = b.attempt AND t.status || '' = 'started'
      AND t.worker_id = p_worker
    RETURNING t.id, t.flow_slug, b.ran, t.run_id, t.step_slug, t.task_index, t.attempt,
              t.worker_id, t.started_at, t.error
  ),
  kept AS (
    INSERT INTO flowreg.task_attempts (run_id, step_slug, task_index, attempt, worker_id,
                                       started_at, finished_at, outcome, error)
    SELECT u.run_id, u.step_slug, u.task_index, u.attempt, u.worker_id, u.started_at, now(),
           'interrupted', u.error
    FROM upd u WHERE u.ran
    ON CONFLICT DO NOTHING
  )
  SELECT array_agg(u.id), array_agg(DISTINCT u.flow_slug) INTO v_acc, v_flows FROM upd u;
  IF v_flows IS NOT NULL THEN
    PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
  END IF;
  RETURN coalesce(v_acc, '{}');
END $$;

ALTER FUNCTION flowreg.release_tasks(text, jsonb)
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
