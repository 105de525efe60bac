-- Deletes the schedule $1; returns its name when there was one.
DELETE FROM flowreg.schedules WHERE name = $1 RETURNING name
