-- flowreg migration 0017: a run of a chain keeps a step state only for each step that has ended.
--
-- A chain is a flow of two or more single steps, each depending on at most one other, with one
-- leaf (so one root: a -> b -> c). Such a run has at most one step running at a time, and its
-- other steps' states follow from it: those before it completed, those after it not yet started.
-- Before, a chain's start wrote a step state per step, then each step's completion wrote two of
-- them (its own, and the next step's, started), under a lock of the run. Now:
-- * runs.chained marks a run of this layout (start_runs sets it for a chain's runs). It has no
--   step state for a step that is not yet started or still running: the step state of a step is
--   written once, by the statement that records how it ended (completed, with its output; failed;
--   cancelled, when its run ended while it ran), with its attempts, worker and start time.
-- * tasks.chained marks the task of such a run's step, so that its completion (_complete_locked)
--   and failure (_fail_locked, _drop_tasks) know the layout from the task itself; its created_at
--   (unused since 0014) is set, as the step's start time.
-- * A step's completion inserts its step state and either the next step's task (created claimed
--   by the worker within work(), as before) or, for the leaf, completes the run with its output.
--   The run is still locked first, by id, as every run with step states is (the lock order is
--   unchanged).
-- Per 3-step chain run (bench/work_cost.sh --flow chain --runs 6000 --rounds 1 --wal, against the
-- release before, one round each): the start writes 708 B of WAL instead of 1,374; the drain
-- 2,661 instead of 2,559 (a step state is inserted once rather than updated twice in place);
-- work() takes 73.3 us instead of 89.0 at batch 64, 61.0 instead of 76.1 at batch 512.
--
-- The view flowreg.steps shows the steps of such a run that have no step state: the one with a
-- task is started, the others are created, or cancelled once the run has ended (its
-- finished_at). Readers see the same columns and states as before.
--
-- A running database upgrades in place: the live (started) runs of chains move to the new layout
-- (the step states of their steps not ended are deleted; the task of the running one gets its
-- step's start time), so that every started run of a chain has the new layout. A start that was
-- waiting for this upgrade's lock on runs while it committed may still write the former layout
-- (runs.chained false): such a run goes on in that layout, with the former functions' paths,
-- which stay. (IF NOT EXISTS: a database may run this file again after its record was lost,
-- like 0007.)
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS chained boolean NOT NULL DEFAULT false;
ALTER TABLE flowreg.tasks ADD COLUMN IF NOT EXISTS chained boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN flowreg.tasks.created_at IS
  'a chained task''s step start time (migration 0017); unused for other tasks since 0014';

WITH chains AS (
  SELECT fs.flow_slug, fs.version FROM flowreg.flow_steps fs
  GROUP BY 1, 2
  HAVING count(*) > 1 AND bool_and(fs.kind = 'single') AND bool_and(cardinality(fs.deps) <= 1)
     AND count(*) FILTER (WHERE fs.is_leaf) = 1
),
moving AS (
  UPDATE flowreg.runs r SET chained = true
  FROM chains c
  WHERE r.flow_slug = c.flow_slug AND r.flow_version = c.version AND r.status = 'started'
    AND NOT r.chained
  RETURNING r.id
),
tasks_moved AS (
  UPDATE flowreg.tasks t
  SET chained = true,
      created_at = (SELECT s.started_at FROM flowreg.step_states s
                    WHERE s.run_id = t.run_id AND s.step_slug = t.step_slug)
  FROM moving m
  WHERE t.run_id = m.id AND NOT t.solo
)
DELETE FROM flowreg.step_states s USING moving m
WHERE s.run_id = m.id AND s.status IN ('created', 'started');

CREATE OR REPLACE VIEW flowreg.steps AS
  SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.status, s.remaining_deps,
         s.remaining_tasks, s.task_count, s.output, s.error, s.started_at, s.finished_at,
         s.attempts, s.worker_id
  FROM flowreg.step_states s
  UNION ALL
  SELECT r.id, fs.step_slug, fs.step_index, fs.kind, r.status, 0,
         CASE WHEN r.status = 'completed' THEN 0 ELSE 1 END, 1, r.output -> fs.step_slug,
         CASE WHEN r.status = 'failed' THEN r.error END, r.created_at, r.finished_at,
         r.attempts, r.worker_id
  FROM flowreg.runs r
  JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
  WHERE r.attempts IS NOT NULL
  UNION ALL
  -- A chain's steps not ended (migration 0017): the one with a task is started; the others are
  -- created, or cancelled with their run.
  SELECT r.id, fs.step_slug, fs.step_index, fs.kind,
         CASE WHEN r.status <> 'started' THEN 'cancelled'
              WHEN t.id IS NOT NULL THEN 'started' ELSE 'created' END,
         CASE WHEN t.id IS NULL THEN cardinality(fs.deps) ELSE 0 END,
         CASE WHEN t.id IS NOT NULL THEN 1 ELSE 0 END, CASE WHEN t.id IS NOT NULL THEN 1 ELSE 0 END,
         NULL::jsonb, NULL::text, t.created_at,
         CASE WHEN r.status <> 'started' THEN r.finished_at END, 0, NULL::text
  FROM flowreg.runs r
  JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
  LEFT JOIN flowreg.tasks t ON t.run_id = r.id AND t.step_slug = fs.step_slug
                            AND t.task_index = 0 AND NOT t.solo
  WHERE r.chained
    AND NOT EXISTS (SELECT FROM flowreg.step_states s
                    WHERE s.run_id = r.id AND s.step_slug = fs.step_slug);
