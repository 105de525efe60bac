-- flowreg migration 0009: tasks is the queue; a task leaves it when it is done.
--
-- A task row lives while its work may still run: queued, started, or (a map step's task only)
-- completed with its output while other tasks of its step run. A single step's task is deleted
-- when it completes or fails for good, a map step's tasks when their step completes (their
-- outputs are then its output), and every task of a run that fails or is cancelled. A delete
-- writes one small WAL record and no index entry, where the update that marked a task finished
-- wrote the whole row again and an entry in each index of tasks.
--
-- What the finished rows kept as history moves to the step state:
-- * step_states.attempts: the attempts of its tasks that are no longer queued or started (a
--   completed map task still held counts here). The attempts of a step are this plus those of its
--   queued and started tasks.
-- * step_states.worker_id: the worker that recorded the last result of one of its tasks.
--
-- A running database upgrades in place: the finished rows are folded into their step states and
-- deleted; a single step's task still queued or started that holds a copy of its input (created
-- before 0008) drops it, the claim reading the same input from the run or the dependencies'
-- outputs (see 0008), so that every single step's task is recognised by its NULL input. (IF NOT
-- EXISTS: a database may run this file again after its record was lost, like 0007 and 0008.)
ALTER TABLE flowreg.step_states ADD COLUMN IF NOT EXISTS attempts int NOT NULL DEFAULT 0;
ALTER TABLE flowreg.step_states ADD COLUMN IF NOT EXISTS worker_id text;

UPDATE flowreg.step_states s
SET attempts = s.attempts + f.attempts, worker_id = coalesce(f.worker_id, s.worker_id)
FROM (SELECT t.run_id, t.step_slug, sum(t.attempt)::int AS attempts,
             (array_agg(t.worker_id ORDER BY t.finished_at DESC NULLS LAST, t.id DESC))[1]
               AS worker_id
      FROM flowreg.tasks t
      WHERE t.status NOT IN ('queued', 'started')
      GROUP BY 1, 2) f
WHERE s.run_id = f.run_id AND s.step_slug = f.step_slug;

-- Kept: live tasks, and the completed tasks of a map step that is still started.
DELETE FROM flowreg.tasks t
WHERE t.status NOT IN ('queued', 'started')
  AND NOT (t.status = 'completed'
           AND EXISTS (SELECT 1 FROM flowreg.step_states s
                       WHERE s.run_id = t.run_id AND s.step_slug = t.step_slug
                         AND s.kind = 'map' AND s.status = 'started'));

UPDATE flowreg.tasks t SET input = NULL
FROM flowreg.step_states s
WHERE t.input IS NOT NULL AND t.status IN ('queued', 'started')
  AND s.run_id = t.run_id AND s.step_slug = t.step_slug AND s.kind = 'single';
