-- The schedules' gauges for the metrics (StoreMetrics, at most one read per scrape period): a
-- first row with the number of schedules paused, due (next tick passed, not paused) and scheduled
-- (the others), then the $1 unpaused schedules with the earliest next tick (the most overdue
-- first), each with its next tick and the lag of its last tick that started a run (from the tick
-- to the commit that started it; null when its last outcome was not 'started'). Timestamps as
-- microseconds since the epoch.
--
-- The counts read the table whole (one row per schedule: a small table, and this runs at most
-- once per scrape period); the per-schedule rows are an ordered walk of schedules_due (next_fire_at
-- WHERE NOT paused) that stops after $1 rows.
(SELECT NULL::text AS name, count(*) FILTER (WHERE paused) AS paused,
  count(*) FILTER (WHERE NOT paused AND next_fire_at <= now()) AS due,
  count(*) FILTER (WHERE NOT paused AND (next_fire_at IS NULL OR next_fire_at > now()))
   AS scheduled,
  NULL::bigint AS next_fire_at_us, NULL::float8 AS last_lag_seconds
 FROM flowreg.schedules)
UNION ALL
(SELECT s.name, NULL, NULL, NULL, (extract(epoch FROM s.next_fire_at) * 1000000)::bigint,
  CASE WHEN s.last_outcome = 'started'
   THEN greatest(extract(epoch FROM s.last_fired_at - s.last_tick_at), 0)::float8 END
 FROM flowreg.schedules s
 WHERE NOT s.paused AND s.next_fire_at IS NOT NULL
 ORDER BY s.next_fire_at
 LIMIT $1)
