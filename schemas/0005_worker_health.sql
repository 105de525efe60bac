-- flowreg migration 0005: worker health (core/src/worker).
--
-- * Crash attribution. A worker journals the tasks whose handlers run; a worker starting later on
--   the same data directory reports what a dead one left: report_crashes() fails at once the task
--   whose handler a fatal signal was attributed to, and counts a crash against the others that
--   were running when their worker died (tasks.crashes); a task reaching the limit fails too. A
--   crash is reported against the attempt that ran, whether its lease is still held or has already
--   expired (the task then waits in the queue with that attempt).
-- * Liveness. Workers report their heartbeat interval and their state ('running'; 'stuck': every
--   handler thread is held by a handler that timed out and never returned, so it claims nothing).
--   Whoever lists workers compares the heartbeat's age with the interval.
-- * Lease renewal that never waits: renew_leases with p_skip_locked skips the tasks whose rows are
--   being written (their results are being recorded) instead of queueing behind that transaction.

ALTER TABLE flowreg.tasks ADD COLUMN crashes int NOT NULL DEFAULT 0;
ALTER TABLE flowreg.workers ADD COLUMN state text NOT NULL DEFAULT 'running';
ALTER TABLE flowreg.workers ADD COLUMN heartbeat_ms bigint;

CREATE FUNCTION flowreg.worker_heartbeat(p_worker text, p_host text, p_pid int, p_flows jsonb,
                                         p_concurrency int, p_stopped boolean, p_state text,
                                         p_heartbeat_ms bigint)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO flowreg.workers AS w (id, host, pid, flows, concurrency, stopped_at, state,
                                    heartbeat_ms)
  VALUES (p_worker, p_host, p_pid, p_flows, p_concurrency, CASE WHEN p_stopped THEN now() END,
          p_state, p_heartbeat_ms)
  ON CONFLICT (id) DO UPDATE
  SET last_heartbeat_at = now(), host = excluded.host, pid = excluded.pid, flows = excluded.flows,
      concurrency = excluded.concurrency, stopped_at = excluded.stopped_at,
      state = excluded.state, heartbeat_ms = excluded.heartbeat_ms,
      started_at = CASE WHEN w.pid <> excluded.pid OR w.host <> excluded.host THEN now()
                        ELSE w.started_at END;
$$;

CREATE FUNCTION flowreg.renew_leases(p_worker text, p_batch jsonb, p_lease_ms bigint,
                                     p_skip_locked boolean)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_acc bigint[];
BEGIN
  IF NOT p_skip_locked THEN
    RETURN flowreg.renew_leases(p_worker, p_batch, p_lease_ms);
  END IF;
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  WITH mine AS (
    SELECT t.id FROM flowreg.tasks t
    JOIN jsonb_to_recordset(p_batch) AS b(id bigint, attempt int) ON b.id = t.id
    WHERE t.id = ANY (v_ids) AND t.attempt = b.attempt AND t.status = 'started'
      AND t.worker_id = p_worker
    FOR UPDATE OF t SKIP LOCKED
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET lease_expires_at = now() + least(t.timeout_ms, coalesce(p_lease_ms, t.timeout_ms))
                                   * interval '1 ms'
    FROM mine WHERE t.id = mine.id
    RETURNING t.id
  )
  SELECT array_agg(id) INTO v_acc FROM upd;
  -- Rejected: the tasks that are no longer this worker's at that attempt, read afresh (no lock).
  -- A task skipped above because another transaction held its row (the worker's own result being
  -- recorded, a claimer or a crash report looking at it) and still this worker's is neither
  -- renewed nor rejected: the next renewal sees it.
  RETURN ARRAY(
    SELECT DISTINCT b.id FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int)
    WHERE b.id <> ALL (coalesce(v_acc, '{}'))
      AND NOT EXISTS (SELECT 1 FROM flowreg.tasks t
                      WHERE t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
                        AND t.worker_id = p_worker)
    ORDER BY 1);
END $$;

-- Reports tasks a dead worker was running. p_batch: [{"id", "attempt", "signal"}], signal null
-- when none was recorded for that task. An entry counts when the task is still at that attempt,
-- started or queued again after its lease expired. A task with a signal fails permanently with
-- "handler crashed the worker (signal N)"; one without gets a crash counted, and fails once it
-- has p_limit of them. Rows: (id, outcome) with outcome 'failed', 'counted' or 'stale' (the task
-- moved on: completed, failed, or a later attempt runs).
CREATE FUNCTION flowreg.report_crashes(p_batch jsonb, p_limit int)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_ids bigint[];
  v_fail jsonb;
  v_counted bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  IF v_ids IS NULL THEN
    RETURN;
  END IF;
  PERFORM flowreg._lock_runs_of(v_ids);
  WITH b AS (
    SELECT DISTINCT ON (b.id) b.* FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int,
                                                                        signal int)
    ORDER BY b.id, b.signal NULLS LAST
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET crashes = t.crashes + 1,
        status = CASE WHEN b.signal IS NOT NULL OR t.crashes + 1 >= p_limit THEN 'started'
                      ELSE t.status END
    FROM b
    WHERE t.id = ANY (v_ids) AND t.id = b.id AND t.attempt = b.attempt
      AND t.status IN ('started', 'queued')
    RETURNING t.id, t.attempt, t.crashes, b.signal,
              (b.signal IS NOT NULL OR t.crashes >= p_limit) AS fail
  )
  SELECT jsonb_agg(jsonb_build_object(
           'id', u.id, 'attempt', u.attempt, 'permanent', true,
           'error', CASE WHEN u.signal IS NOT NULL
                         THEN format('handler crashed the worker (signal %s)', u.signal)
                         ELSE format('handler was running in %s workers that died (no fatal '
                                     'signal was recorded for it)', u.crashes) END))
           FILTER (WHERE u.fail),
         array_agg(u.id) FILTER (WHERE NOT u.fail)
  INTO v_fail, v_counted
  FROM upd u;
  IF v_fail IS NOT NULL THEN
    RETURN QUERY SELECT f, 'failed'::text FROM unnest(flowreg._fail_locked(v_fail)) AS f;
  END IF;
  RETURN QUERY SELECT c, 'counted'::text FROM unnest(coalesce(v_counted, '{}')) AS c;
  RETURN QUERY SELECT i, 'stale'::text FROM unnest(v_ids) AS i
               WHERE i NOT IN (SELECT (e->>'id')::bigint FROM jsonb_array_elements(coalesce(v_fail, '[]')) e)
                 AND i <> ALL (coalesce(v_counted, '{}'));
END $$;

-- Called on every keeper tick and at every start: plans that walk the tasks' primary key at any
-- table size (see 0004 for why generic plans need sequential scans off).
ALTER FUNCTION flowreg.renew_leases(text, jsonb, bigint, boolean)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION flowreg.report_crashes(jsonb, int)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
