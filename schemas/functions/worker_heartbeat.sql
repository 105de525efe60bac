-- Records a worker's heartbeat: what it serves, its state ('running', or 'stuck' when every
-- handler thread is held by a handler that timed out) and its heartbeat interval, so that whoever
-- lists workers can compare the heartbeat's age with the interval. A new pid or host restarts
-- started_at.
CREATE OR REPLACE FUNCTION flowreg.worker_heartbeat(p_worker text, p_host text, p_pid int,
                                                    p_flows jsonb, p_concurrency int,
                                                    p_stopped boolean, p_state text,
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

ALTER FUNCTION flowreg.worker_heartbeat(text, text, int, jsonb, int, boolean, text, bigint)
  SET jit = off;
