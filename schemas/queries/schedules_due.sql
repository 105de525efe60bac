-- The due schedules of the flows $1 (a JSON array of slugs), at most $2, with the server's now and
-- the earliest next tick not due yet: flowreg.due_schedules (schemas/functions/due_schedules.sql).
SELECT * FROM flowreg.due_schedules($1::jsonb, $2)
