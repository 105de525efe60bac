-- Records a run started by hand from the schedule $1 (flowreg schedules trigger): it is its last
-- run, which its overlap policy waits for. Returns its name when there was one.
UPDATE flowreg.schedules
SET last_run_id = $2::uuid, last_fired_at = now(), fired = fired + 1,
    last_outcome = 'triggered by hand', updated_at = now()
WHERE name = $1 RETURNING name
