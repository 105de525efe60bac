-- Creates the schedule $1 or replaces its definition. Its next tick becomes $11 (microseconds since
-- the epoch, computed by flowreg) when it is new or its timing changed (cron, time zone); else
-- the tick it had is kept. `paused` ($12) is set when it is created, or when $13 is true (a
-- change made at run time): a schedule declared in a file and paused by hand stays paused when
-- its worker starts again. Returns whether it was created.
INSERT INTO flowreg.schedules AS s (name, flow_slug, cron, timezone, input, time_key, catch_up,
                                    catch_up_max, overlap, source, next_fire_at, paused)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, to_timestamp($11::bigint / 1e6), $12)
ON CONFLICT (name) DO UPDATE
SET flow_slug = excluded.flow_slug, cron = excluded.cron, timezone = excluded.timezone,
    input = excluded.input, time_key = excluded.time_key, catch_up = excluded.catch_up,
    catch_up_max = excluded.catch_up_max, overlap = excluded.overlap, source = excluded.source,
    next_fire_at = CASE WHEN (s.cron, s.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone)
                        THEN excluded.next_fire_at ELSE s.next_fire_at END,
    paused = CASE WHEN $13 THEN excluded.paused ELSE s.paused END,
    updated_at = now()
WHERE (s.flow_slug, s.cron, s.timezone, s.input, s.time_key, s.catch_up, s.catch_up_max,
       s.overlap, s.source) IS DISTINCT FROM
      (excluded.flow_slug, excluded.cron, excluded.timezone, excluded.input, excluded.time_key,
       excluded.catch_up, excluded.catch_up_max, excluded.overlap, excluded.source)
   OR ($13 AND s.paused IS DISTINCT FROM excluded.paused)
RETURNING (xmax = 0) AS created
