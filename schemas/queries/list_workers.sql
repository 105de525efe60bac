-- The workers, most recent heartbeat first. Timestamps as microseconds since the epoch.
SELECT id, host, pid, concurrency, flows::text AS flows,
 (extract(epoch FROM started_at) * 1000000)::bigint AS started_at_us,
 (extract(epoch FROM last_heartbeat_at) * 1000000)::bigint AS last_heartbeat_at_us,
 (extract(epoch FROM stopped_at) * 1000000)::bigint AS stopped_at_us, state,
 heartbeat_ms,
 (extract(epoch FROM clock_timestamp() - last_heartbeat_at) * 1000)::bigint AS
 heartbeat_age_ms
 FROM flowreg.workers ORDER BY last_heartbeat_at DESC, id
