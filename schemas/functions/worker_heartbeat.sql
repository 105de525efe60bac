-- Records a worker's heartbeat: what it serves, its state ('running'; 'stuck' when handlers that
-- timed out hold too many of its threads; 'replacing' while it replaces itself for that) and its
-- heartbeat interval, so that whoever
-- lists workers can compare the heartbeat's age with the interval; and its pools of handler
-- processes (migration 0030; null without any, and from workers of earlier releases, which call
-- this without it). A new pid or host restarts
-- started_at.
-- A worker's first heartbeat (its row inserted: each process has an id of its own) also forgets
-- the workers not heard from for 7 days, and, beyond the 1,000 heard from last, those not heard
-- from for an hour: a row stays while its worker runs (it beats every few seconds) and for a while
-- after it stopped or died, so that the list of workers (flowreg workers, the API, the dashboard)
-- shows the recent ones without growing with every process ever started (a crash loop starts one
-- a second). The rows are few, read whole once per worker start.
CREATE OR REPLACE FUNCTION flowreg.worker_heartbeat(p_worker text, p_host text, p_pid int,
                                                    p_flows jsonb, p_concurrency int,
                                                    p_stopped boolean, p_state text,
                                                    p_heartbeat_ms bigint,
                                                    p_handler_processes jsonb DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_new boolean;
BEGIN
  INSERT INTO flowreg.workers AS w (id, host, pid, flows, concurrency, stopped_at, state,
                                    heartbeat_ms, handler_processes)
  VALUES (p_worker, p_host, p_pid, p_flows, p_concurrency, CASE WHEN p_stopped THEN now() END,
          p_state, p_heartbeat_ms, p_handler_processes)
  ON CONFLICT (id) DO UPDATE
  SET last_heartbeat_at = now(), host = excluded.host, pid = excluded.pid, flows = excluded.flows,
      concurrency = excluded.concurrency, stopped_at = excluded.stopped_at,
      state = excluded.state, heartbeat_ms = excluded.heartbeat_ms,
      handler_processes = excluded.handler_processes,
      started_at = CASE WHEN w.pid <> excluded.pid OR w.host <> excluded.host THEN now()
                        ELSE w.started_at END
  RETURNING w.xmax = 0 INTO v_new;  -- xmax 0: inserted (an update sets it)
  IF v_new THEN
    DELETE FROM flowreg.workers o
    WHERE o.id <> p_worker
      AND (o.last_heartbeat_at < now() - interval '7 days'
           OR (o.last_heartbeat_at < now() - interval '1 hour'
               AND o.id NOT IN (SELECT k.id FROM flowreg.workers k
                                ORDER BY k.last_heartbeat_at DESC LIMIT 1000)));
  END IF;
END $$;

ALTER FUNCTION flowreg.worker_heartbeat(text, text, int, jsonb, int, boolean, text, bigint, jsonb)
  SET jit = off;
