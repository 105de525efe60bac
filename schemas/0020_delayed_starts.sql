-- flowreg migration 0020: a run may be started for a later time (a delayed start).
--
-- `flowreg run --at TIME | --delay DURATION` and the API's run_at / delay create the run at once,
-- as any start does, and make its first tasks claimable at that time: their available_at, which
-- every claim already filters on (`available_at <= now()`, tasks_queued's order), and which the
-- worker already sleeps until (work's 'due' row, as for a retry's backoff). The run records the
-- time it was started for:
-- * runs.start_at: the time a delayed run's first tasks became claimable; NULL for a run started
--   at once (every run but delayed ones, and every run started before this migration). Readers
--   show a run whose status is started and whose start_at is still ahead as `scheduled`.
-- The column is the last of runs (ADD COLUMN appends): it is written once, by the delayed start's
-- own transaction (schemas/queries/delay_starts.sql, after start_run or start_runs), and never by
-- the hot path's updates, whose changed columns stay where migration 0018 put them (before it:
-- the unchanged suffix is not logged). A start without a time writes and executes nothing more.
-- A NULL at the end of a row takes no byte of it but a bit of its null bitmap, which a run's row
-- has anyway (its finished_at, error and output are NULL when it is inserted).
-- (IF NOT EXISTS: a database may run this file again after its record was lost, like 0007. When
-- migration 0018 ran again too, it moved its columns after this one: the column then moves to the
-- end again, its values kept, so that the table ends as a new database's.)
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_attribute a
             WHERE a.attrelid = 'flowreg.runs'::regclass AND a.attname = 'start_at'
               AND a.attnum < (SELECT max(l.attnum) FROM pg_attribute l
                               WHERE l.attrelid = 'flowreg.runs'::regclass AND l.attnum > 0
                                 AND NOT l.attisdropped)) THEN
    ALTER TABLE flowreg.runs RENAME COLUMN start_at TO start_at_0019;
    ALTER TABLE flowreg.runs ADD COLUMN start_at timestamptz;
    UPDATE flowreg.runs SET start_at = start_at_0019 WHERE start_at_0019 IS NOT NULL;
    ALTER TABLE flowreg.runs DROP COLUMN start_at_0019;
  END IF;
END $$;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS start_at timestamptz;
