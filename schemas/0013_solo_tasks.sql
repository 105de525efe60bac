-- flowreg migration 0013: the task of a one-step flow's run is found from its run, not by an index.
--
-- tasks' unique index on (run_id, step_slug, task_index) finds a run's tasks (cancel, a failed run,
-- prune, a map step's outputs, the attempts of live tasks in RunStore's run steps). A one-step
-- flow's run (migration 0012) has one task, whose id its run can hold: such a task (tasks.solo) has
-- no entry in that index, and its run's task_id names it. Per single-step run, that is one index
-- entry fewer when the task is inserted and one fewer when its claim writes a new version of its
-- row (an update that changes status is no HOT update): 1,413 bytes of WAL per run instead of
-- 1,605, the run's row 12 bytes longer (bench/work_cost.sh --flow single --wal, batch 64).
-- * runs.task_id: the id of its task (start_run and start_runs take it from the tasks' identity
--   sequence before inserting both rows); NULL for a run of several steps or a map step, and for
--   one started before this migration.
-- * tasks.solo: true for such a task, which the index below leaves out. A task never changes
--   from one kind to the other.
-- * tasks_by_run: the unique index on (run_id, step_slug, task_index) of the other tasks. Readers
--   of a run's tasks write `NOT t.solo` so that their plans use it, and find a solo task by its
--   run's task_id through tasks_pkey (checking that the task is that run's: the id stays in the
--   run after its task is gone). (The steps view is unchanged: migration 0012's text
--   replaces it, so a view with another column would make 0012 fail if it ran again.)
--
-- A running database upgrades in place with nothing to move: the tasks of the runs started before
-- are not solo, so the new index holds them, and their runs' task_id is NULL, as readers expect of
-- a run whose task is found by the index. (IF NOT EXISTS: a database may run this file again
-- after its record was lost, like 0007.) The upgrade locks runs and tasks while it builds the
-- new index over the whole queue: workers wait for it, longer the longer the queue.
-- A process of the previous release still running afterwards reads a run's steps with a query
-- that cannot use the partial index (no `NOT solo`): it reads all of tasks per step, with the
-- right result, until it is restarted.
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS task_id bigint;
ALTER TABLE flowreg.tasks ADD COLUMN IF NOT EXISTS solo boolean NOT NULL DEFAULT false;

CREATE UNIQUE INDEX IF NOT EXISTS tasks_by_run ON flowreg.tasks (run_id, step_slug, task_index)
  WHERE NOT solo;
ALTER TABLE flowreg.tasks DROP CONSTRAINT IF EXISTS tasks_run_id_step_slug_task_index_key;
