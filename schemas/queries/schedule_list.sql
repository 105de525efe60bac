-- The schedules by name ($1: the one named so, '' for any; $2: those of that flow, '' for any; at
-- most $3; $4: those after that name, '' for the first), with the status of their last run and whether their flow is stored (a version of it
-- was loaded by a worker or a front end). Timestamps as microseconds since the epoch. An ordered
-- walk of the primary key that stops after $3 rows (the dashboard asks for one more than it shows,
-- to say that there are more); with a flow, the rows of other flows are skipped on the way.
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
WHERE ($1 = '' OR s.name = $1) AND ($2 = '' OR s.flow_slug = $2) AND ($4 = '' OR s.name > $4)
ORDER BY s.name
LIMIT $3
