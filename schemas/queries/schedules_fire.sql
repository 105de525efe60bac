-- Fires a batch of due schedules: flowreg.fire_schedules (schemas/functions/fire_schedules.sql).
-- $1: a JSON array of firings.
SELECT f.name, f.outcome, f.started FROM flowreg.fire_schedules($1::jsonb) AS f
