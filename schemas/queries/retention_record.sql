-- Records a round of retention (migration 0029): $1 runs and $2 events removed, in $3
-- milliseconds, by worker $4; $5 its error ('' when none).
UPDATE flowreg.retention SET rounds = rounds + 1, runs_removed = runs_removed + $1::bigint,
 events_removed = events_removed + $2::bigint, last_at = now(), last_ms = $3::bigint,
 last_runs = $1::bigint, last_worker = $4, last_error = NULLIF($5, '')
