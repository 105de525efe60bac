-- The tasks of run $1 waiting for their next attempt after one failed: queued again with the
-- error of the attempt that failed, its number (attempt) and the time of the next (available_at),
-- as _fail_locked leaves them. Per step, the task due first. Found as run_steps.sql finds them: by
-- run (tasks_by_run), and a one-step flow's solo task by the id its run holds (migration 0013).
-- The error is cut to its first 400 characters (the caller bounds it to bytes).
SELECT DISTINCT ON (t.step_slug) t.step_slug, t.attempt, left(t.error, 400) AS error,
 (extract(epoch FROM t.available_at) * 1000000)::bigint AS next_attempt_at_us
 FROM (SELECT t.step_slug, t.attempt, t.error, t.available_at FROM flowreg.tasks t
   WHERE t.run_id = $1::uuid AND NOT t.solo AND t.status = 'queued' AND t.error IS NOT NULL
  UNION ALL
  SELECT t.step_slug, t.attempt, t.error, t.available_at FROM flowreg.tasks t
   WHERE t.id = (SELECT r.task_id FROM flowreg.runs r WHERE r.id = $1::uuid)
    AND t.run_id = $1::uuid AND t.status = 'queued' AND t.error IS NOT NULL) t
 ORDER BY t.step_slug, t.available_at
