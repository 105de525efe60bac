-- flowreg migration 0031: what each attempt run in a handler process cost (isolation: process),
-- kept with the attempt.
--
-- `process` (jsonb): [pid, cpu_us, max_rss_kb, handler_us] and, when the process ended during the
-- task or the handler left processes running, [..., signal, exit_status, left_processes] (null:
-- none), as the worker sent it with the attempt's result (store/run_store_lifecycle.cpp): the
-- handler process's pid, the CPU time the task took (user and system), the process's peak resident
-- set so far, how long the handler ran measured in the process; the signal or exit status that
-- ended the process, and how many processes the handler had left running (killed with it). An array
-- rather than an object: written into a run's row at each completion, it takes 64 bytes where the
-- same values with their keys take 138 (pg_column_size), and the row's room for its update on the
-- same page (fillfactor 40: migration 0010) lasts longer. Null for an attempt whose handler ran on
-- a thread, and for those of workers of releases before this one. Written where the attempt's other
-- facts are, in the statement that writes them already (no row and no index entry more per task):
-- the run of a one-step flow (migration 0012) and the step state of a single step hold their
-- completing attempt's; a map step's task holds its own while its step runs, then the step state
-- holds theirs, an array in task order; an attempt that did not complete, its task_attempts row
-- (migration 0019). Stored as sent when it is an array (_complete_locked, _fail_locked); its
-- readers check each value (store/run_store_reads.cpp).
--
-- (IF NOT EXISTS, and the column moved last again in runs and tasks, as 0023 does: a database may
-- run this file again after its record was lost, after 0018 and the migrations after it moved
-- their columns after this one.)
DO $$
DECLARE
  c regclass;
BEGIN
  FOREACH c IN ARRAY ARRAY['flowreg.runs'::regclass, 'flowreg.tasks'::regclass] LOOP
    IF EXISTS (SELECT FROM pg_attribute a
               WHERE a.attrelid = c AND a.attname = 'process'
                 AND a.attnum < (SELECT max(l.attnum) FROM pg_attribute l
                                 WHERE l.attrelid = c AND l.attnum > 0 AND NOT l.attisdropped)) THEN
      EXECUTE format('ALTER TABLE %s RENAME COLUMN process TO process_0030', c);
      EXECUTE format('ALTER TABLE %s ADD COLUMN process jsonb', c);
      EXECUTE format('UPDATE %s SET process = process_0030 WHERE process_0030 IS NOT NULL', c);
      EXECUTE format('ALTER TABLE %s DROP COLUMN process_0030', c);
    END IF;
  END LOOP;
END $$;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS process jsonb;
ALTER TABLE flowreg.step_states ADD COLUMN IF NOT EXISTS process jsonb;
ALTER TABLE flowreg.tasks ADD COLUMN IF NOT EXISTS process jsonb;
ALTER TABLE flowreg.task_attempts ADD COLUMN IF NOT EXISTS process jsonb;
