-- The attempts of the tasks of run $1 (of step $2 only, unless $2 is ''), ordered by step (the
-- flow's step order), task index and attempt number; $3 rows from the $4th (0-based), each with
-- the number of rows in all (total). Three sources, none of which holds an attempt another holds:
-- * task_attempts: the attempts that did not complete (migration 0019), by primary key;
-- * the run's live tasks: an attempt running (started) or a map step's task completed while its
--   step runs; found by run (tasks_by_run, NOT solo) and a one-step flow's solo task by the id
--   its run holds (migration 0013), as run_steps.sql finds them. A started task whose attempt is
--   kept already (its worker shut down on its last attempt: release_tasks) is that row only;
-- * a completed step's completing attempts, which the step state (or the run, migration 0012)
--   holds: a single step's is its attempts (all counted) with its worker and end; a map step's
--   tasks left with their step, so each task's is the one after its last kept attempt, with no
--   worker or time. No start is kept for an attempt that completed once its task has left.
-- A step that failed or was cancelled keeps only its attempts that did not complete: its other
-- tasks left the queue with their run (_drop_tasks). The error is cut to its first 1,000
-- characters (the caller bounds it to bytes). process: what an attempt run in a handler process
-- cost there (migration 0031), as its worker sent it (the caller checks it); NULL otherwise.
WITH st AS MATERIALIZED (
  SELECT s.step_slug, s.step_index, s.kind, s.status, s.task_count, s.attempts, s.worker_id,
         s.finished_at
  FROM flowreg.steps s WHERE s.run_id = $1::uuid AND ($2::text = '' OR s.step_slug = $2::text)
),
kept AS MATERIALIZED (
  SELECT a.step_slug, a.task_index, a.attempt, a.worker_id, a.started_at, a.finished_at,
         a.outcome, left(a.error, 1000) AS error, a.process, false AS ended
  FROM flowreg.task_attempts a
  WHERE a.run_id = $1::uuid AND ($2::text = '' OR a.step_slug = $2::text)
),
live AS (
  SELECT t.step_slug, t.task_index, t.attempt, t.worker_id, t.started_at,
         CASE WHEN t.status = 'completed' THEN t.finished_at END AS finished_at,
         CASE WHEN t.status = 'completed' THEN 'completed' ELSE 'running' END AS outcome,
         NULL::text AS error, t.process, false AS ended
  FROM (SELECT t.step_slug, t.task_index, t.attempt, t.worker_id, t.started_at, t.finished_at,
               t.status, t.process FROM flowreg.tasks t
        WHERE t.run_id = $1::uuid AND NOT t.solo AND t.status IN ('started', 'completed')
        UNION ALL
        SELECT t.step_slug, t.task_index, t.attempt, t.worker_id, t.started_at, t.finished_at,
               t.status, t.process FROM flowreg.tasks t
        WHERE t.id = (SELECT r.task_id FROM flowreg.runs r WHERE r.id = $1::uuid)
          AND t.run_id = $1::uuid AND t.status IN ('started', 'completed')) t
  WHERE ($2::text = '' OR t.step_slug = $2::text)
    AND NOT EXISTS (SELECT FROM kept k WHERE k.step_slug = t.step_slug
                                         AND k.task_index = t.task_index
                                         AND k.attempt = t.attempt)
),
ended AS (
  SELECT st.step_slug, i.task_index,
         CASE WHEN st.kind IN ('map', 'flow_map')
              THEN 1 + coalesce((SELECT max(k.attempt) FROM kept k
                                 WHERE k.step_slug = st.step_slug
                                   AND k.task_index = i.task_index), 0)
              ELSE st.attempts END AS attempt,
         CASE WHEN st.kind IN ('map', 'flow_map') THEN NULL ELSE st.worker_id END AS worker_id,
         NULL::timestamptz AS started_at,
         CASE WHEN st.kind IN ('map', 'flow_map') THEN NULL ELSE st.finished_at END AS finished_at,
         'completed' AS outcome, NULL::text AS error, NULL::jsonb AS process, true AS ended
  FROM st CROSS JOIN LATERAL generate_series(0, st.task_count - 1) AS i(task_index)
  WHERE st.status = 'completed'
),
u AS (SELECT * FROM kept UNION ALL SELECT * FROM live UNION ALL SELECT * FROM ended),
page AS MATERIALIZED (
  SELECT u.*, st.step_index, st.kind AS step_kind, count(*) OVER () AS total
  FROM u JOIN st ON st.step_slug = u.step_slug
  ORDER BY st.step_index, u.task_index, u.attempt
  LIMIT $3::int OFFSET $4::int
)
SELECT g.step_slug, g.task_index, g.attempt, g.worker_id,
       (extract(epoch FROM g.started_at) * 1000000)::bigint AS started_at_us,
       (extract(epoch FROM g.finished_at) * 1000000)::bigint AS finished_at_us,
       g.outcome, g.error, g.total,
       -- An ended step's completing attempt's, for the page's rows only: its step state's (a map
       -- step's: its task's element of them), or a one-step flow's run's.
       (CASE WHEN NOT g.ended THEN g.process
             ELSE coalesce((SELECT CASE WHEN g.step_kind = 'map' THEN s.process -> g.task_index
                                        ELSE s.process END
                            FROM flowreg.step_states s
                            WHERE s.run_id = $1::uuid AND s.step_slug = g.step_slug),
                           (SELECT r.process FROM flowreg.runs r
                            WHERE r.id = $1::uuid AND r.attempts IS NOT NULL)) END)::text
         AS process
FROM page g
ORDER BY g.step_index, g.task_index, g.attempt
