-- Pauses ($2 true) or resumes ($2 false) the schedule $1; a resumed one's next tick is $3
-- (microseconds since the epoch: the first after now, as flowreg computed it), so that the ticks
-- passed while it was paused do not fire. Returns its name when there was one.
UPDATE flowreg.schedules
SET paused = $2,
    next_fire_at = CASE WHEN $2 THEN next_fire_at ELSE to_timestamp($3::bigint / 1e6) END,
    last_outcome = CASE WHEN $2 THEN 'paused' ELSE last_outcome END, updated_at = now()
WHERE name = $1 RETURNING name
