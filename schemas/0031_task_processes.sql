-- flowreg migration 0031: what each attempt run in a handler process cost (isolation: process).
--
-- One row per attempt that ran in a handler process (worker/handler_process.hpp) and that the
-- store accepted as completed or failed: the process's pid, the CPU time the task took (user and
-- system), the process's peak resident set so far, how long the handler ran measured in the
-- process, and, when the process ended during the task, its signal or exit status and how many
-- processes the handler had started and left running (killed with it). Written with the
-- completion or failure itself (_complete_locked, _fail_locked, from the batch's "process"
-- entries), never for a handler run on a thread, nor by a worker of a release before this one;
-- read with the attempts (schemas/queries/task_attempts.sql), and deleted with its run
-- (_delete_runs). No foreign key, as for task_attempts (migration 0019): the first column of the
-- primary key is the run.
CREATE TABLE IF NOT EXISTS flowreg.task_processes (
  run_id uuid NOT NULL,
  step_slug text NOT NULL,
  task_index int NOT NULL,
  attempt int NOT NULL,
  pid int NOT NULL,
  cpu_us bigint NOT NULL,
  max_rss_kb bigint NOT NULL,
  handler_us bigint NOT NULL,
  signal int,
  exit_status int,
  left_processes int NOT NULL DEFAULT 0,
  PRIMARY KEY (run_id, step_slug, task_index, attempt)
);
