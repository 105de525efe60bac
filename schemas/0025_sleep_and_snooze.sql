-- flowreg migration 0025: sleep steps and snoozed tasks (docs/flows.md#sleep-steps, #snooze).
--
-- * A sleep step (`kind: sleep`) runs no handler: its one task is created queued with its
--   available_at at the end of the sleep, which every claim already filters on (tasks_queued's
--   order) and every worker already sleeps until (work's 'due' row), so a sleeping run holds no
--   lease, no thread and no claim. The worker that claims it once it is due completes it at once.
--   flow_steps.sleep_ms: the sleep's duration from the step's start; sleep_path: the path (#>>)
--   of the RFC 3339 time it sleeps until in its input (its run's input for a root step, else
--   {dependency: output}); both NULL for other kinds. Written by upsert_flow from the stored
--   definition (a sleep is part of a version's shape).
-- * A handler may snooze its task (the SDK's flowreg::snooze): the task is queued again for then
--   without spending an attempt (_fail_locked). tasks.snoozes counts them (NULL: never), the last
--   column of tasks (ADD COLUMN appends), written only by a snooze.
-- (IF NOT EXISTS: a database may run this file again after its record was lost, like 0007. When
-- migration 0018 ran again too, it moved its columns after tasks.snoozes: the column then moves
-- to the end again, its values kept, so that the table ends as a new database's, as in 0022.)
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_attribute a
             WHERE a.attrelid = 'flowreg.tasks'::regclass AND a.attname = 'snoozes'
               AND a.attnum < (SELECT max(l.attnum) FROM pg_attribute l
                               WHERE l.attrelid = 'flowreg.tasks'::regclass AND l.attnum > 0
                                 AND NOT l.attisdropped)) THEN
    ALTER TABLE flowreg.tasks RENAME COLUMN snoozes TO snoozes_0024;
    ALTER TABLE flowreg.tasks ADD COLUMN snoozes int;
    UPDATE flowreg.tasks SET snoozes = snoozes_0024 WHERE snoozes_0024 IS NOT NULL;
    ALTER TABLE flowreg.tasks DROP COLUMN snoozes_0024;
  END IF;
END $$;
ALTER TABLE flowreg.flow_steps DROP CONSTRAINT IF EXISTS flow_steps_kind_check;
ALTER TABLE flowreg.flow_steps ADD CONSTRAINT flow_steps_kind_check
  CHECK (kind IN ('single', 'map', 'sleep'));
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS sleep_ms bigint;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS sleep_path text[];
ALTER TABLE flowreg.tasks ADD COLUMN IF NOT EXISTS snoozes int;
