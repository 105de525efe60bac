-- The schedules ($1 = '' for all, else the one named $1), by name, with the status of their last
-- run and whether their flow is stored (a version of it was loaded by a worker or a front end).
-- Timestamps as microseconds since the epoch. A small table, read whole by design.
SELECT s.name, s.flow_slug, s.cron, s.timezone, s.input::text AS input, s.time_key, s.catch_up,
 s.catch_up_max, s.overlap, s.source, s.paused,
 (extract(epoch FROM s.next_fire_at) * 1000000)::bigint AS next_fire_at_us,
 (extract(epoch FROM s.last_tick_at) * 1000000)::bigint AS last_tick_at_us,
 (extract(epoch FROM s.last_fired_at) * 1000000)::bigint AS last_fired_at_us,
 s.last_run_id::text AS last_run_id, r.status AS last_run_status, s.last_outcome, s.fired,
 s.skipped, (extract(epoch FROM s.created_at) * 1000000)::bigint AS created_at_us,
 (extract(epoch FROM s.updated_at) * 1000000)::bigint AS updated_at_us,
 EXISTS (SELECT FROM flowreg.flows f WHERE f.slug = s.flow_slug) AS flow_stored
FROM flowreg.schedules s
LEFT JOIN flowreg.runs r ON r.id = s.last_run_id
WHERE $1 = '' OR s.name = $1
ORDER BY s.name
