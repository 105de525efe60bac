-- The workers, most recent heartbeat first. Timestamps as microseconds since the epoch.
-- held: the tasks each one holds now (started, under its lease), counted over the started tasks
-- alone, which tasks_leased indexes (a partial index of status = 'started'): as many as the
-- workers' slots, not the queue.
SELECT w.id, w.host, w.pid, w.concurrency, w.flows::text AS flows,
 (extract(epoch FROM w.started_at) * 1000000)::bigint AS started_at_us,
 (extract(epoch FROM w.last_heartbeat_at) * 1000000)::bigint AS last_heartbeat_at_us,
 (extract(epoch FROM w.stopped_at) * 1000000)::bigint AS stopped_at_us, w.state,
 w.heartbeat_ms, w.handler_processes::text AS handler_processes,
 (extract(epoch FROM clock_timestamp() - w.last_heartbeat_at) * 1000)::bigint AS
 heartbeat_age_ms, coalesce(h.held, 0) AS held
 FROM flowreg.workers w
 LEFT JOIN (SELECT t.worker_id, count(*)::int AS held FROM flowreg.tasks t
            WHERE t.status = 'started' AND t.lease_expires_at IS NOT NULL
            GROUP BY t.worker_id) h ON h.worker_id = w.id
 ORDER BY w.last_heartbeat_at DESC, w.id
