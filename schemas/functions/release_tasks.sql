-- Graceful shutdown: gives back tasks p_worker holds. p_batch: [{"id", "attempt", "ran"}]; ran =
-- false: the handler never started (the attempt is refunded, the task requeued at once); ran =
-- true: the handler was interrupted (requeued at once when attempts remain, else the lease is
-- expired now and the next claim fails the step). Other workers are notified. Returns the ids
-- released.
CREATE OR REPLACE FUNCTION flowreg.release_tasks(p_worker text, p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_acc bigint[];
  v_flows text[];
BEGIN
  WITH b AS (
    SELECT * FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int, ran boolean)
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET status = CASE WHEN b.ran AND t.attempt >= t.max_attempts THEN 'started' ELSE 'queued' END,
        attempt = CASE WHEN b.ran THEN t.attempt ELSE t.attempt - 1 END,
        available_at = CASE WHEN b.ran AND t.attempt >= t.max_attempts THEN t.available_at
                            ELSE now() END,
        lease_expires_at = CASE WHEN b.ran AND t.attempt >= t.max_attempts
                                THEN now() - interval '1 ms' END,
        error = CASE WHEN b.ran THEN format('interrupted: worker %s shut down while the handler '
                                            'ran', p_worker) ELSE t.error END,
        error_at = CASE WHEN b.ran THEN now() ELSE t.error_at END
    FROM b
    WHERE t.id = ANY (ARRAY(SELECT (e->>'id')::bigint FROM jsonb_array_elements(p_batch) e))
      AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
      AND t.worker_id = p_worker
    RETURNING t.id, t.flow_slug
  )
  SELECT array_agg(u.id), array_agg(DISTINCT u.flow_slug) INTO v_acc, v_flows FROM upd u;
  IF v_flows IS NOT NULL THEN
    PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
  END IF;
  RETURN coalesce(v_acc, '{}');
END $$;

ALTER FUNCTION flowreg.release_tasks(text, jsonb) SET jit = off;
