-- flowreg migration 0019: every attempt of a task that did not complete is kept.
--
-- Until now a task kept only its last attempt (tasks.error, error_at, worker_id, started_at; its
-- step state's or run's attempts and worker_id once it left the queue). task_attempts holds one
-- row per attempt that ended without completing, written where that happens:
-- * retried: failed with attempts left, queued again (_fail_locked);
-- * failed: failed for good, or permanently (_fail_locked);
-- * lease_expired: its lease ran out, queued again or failed for good (_claim, _fail_locked);
-- * crashed: reported by a worker's crash report (report_crashes, through _fail_locked);
-- * interrupted: its worker shut down while the handler ran (release_tasks), queued again.
-- The attempt that completes is not written here: it stays where it is (a live task's row, the
-- step state's or run's attempts and worker), so a completion writes nothing more than before;
-- readers (schemas/queries/task_attempts.sql) add it. The error is cut to 4,000 characters
-- (the task's own error column keeps the last one whole, as before).
--
-- No foreign key to runs, as for step states and tasks (migration 0008): prune deletes a run's
-- rows by run id through the primary key, whose first column is the run.
CREATE TABLE IF NOT EXISTS flowreg.task_attempts (
  run_id uuid NOT NULL,
  step_slug text NOT NULL,
  task_index int NOT NULL,
  attempt int NOT NULL,
  worker_id text,
  started_at timestamptz,
  finished_at timestamptz NOT NULL,
  outcome text NOT NULL
    CHECK (outcome IN ('retried', 'failed', 'lease_expired', 'crashed', 'interrupted')),
  error text,
  PRIMARY KEY (run_id, step_slug, task_index, attempt)
);
