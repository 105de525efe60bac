-- A page of the tasks of step $2 of run $1 that the queue still holds: those with a task_index of
-- $3 or more, by task_index, at most $4. A task leaves the table when it is done (migration 0009):
-- a single step's task when it completes or fails for good, a map step's tasks when their step
-- completes, every task of a run that failed or was cancelled; what is read here is the queued and
-- started tasks, and the completed tasks of a map step still running. Found as run_steps.sql
-- finds them: by run (tasks_by_run, a range of its (run_id, step_slug, task_index) key, so that a
-- page reads its own entries, not those before it), and a one-step flow's solo task by the id its
-- run holds (migration 0013). The error is cut to its first 400 characters (the caller bounds it
-- to bytes). Timestamps as microseconds since the epoch.
SELECT t.task_index, t.status, t.attempt, t.worker_id, left(t.error, 400) AS error,
 (extract(epoch FROM t.started_at) * 1000000)::bigint AS started_at_us,
 (extract(epoch FROM t.finished_at) * 1000000)::bigint AS finished_at_us,
 (extract(epoch FROM t.available_at) * 1000000)::bigint AS available_at_us
 FROM (SELECT * FROM (SELECT t.task_index, t.status, t.attempt, t.worker_id, t.error,
         t.started_at, t.finished_at, t.available_at FROM flowreg.tasks t
       WHERE t.run_id = $1::uuid AND t.step_slug = $2 AND NOT t.solo AND t.task_index >= $3
       ORDER BY t.task_index LIMIT $4) page
  UNION ALL
  SELECT t.task_index, t.status, t.attempt, t.worker_id, t.error, t.started_at, t.finished_at,
         t.available_at FROM flowreg.tasks t
   WHERE t.id = (SELECT r.task_id FROM flowreg.runs r WHERE r.id = $1::uuid)
    AND t.run_id = $1::uuid AND t.step_slug = $2 AND t.task_index >= $3) t
 ORDER BY t.task_index LIMIT $4
