-- flowreg migration 0008: fewer bytes and WAL records per run.
--
-- * The foreign keys step_states -> runs and tasks -> step_states are dropped. Their rows are
--   created in the same statement as the rows they point at (start_runs, _start_steps), by the
--   functions of schemas/functions/, which are their only writers: the checks never found
--   anything, but each one locked the referenced row, a WAL record per step state and per task.
--   Deleting runs deletes their step states and tasks explicitly (prune). (IF EXISTS: a database
--   may run this file again after its record was lost, like 0007.)
-- * tasks.input may be NULL: a single step's task no longer copies its input; it is derived when
--   the task is claimed from what it was copied from (the run's input for a root step, the
--   outputs of its dependencies otherwise), which cannot change once the task exists. A map
--   step's task keeps its element (reading it out of a large array at every claim would cost
--   more than storing it). Tasks created before keep their copy, which the claim still returns.
-- * A single step's output is stored once, in its step state: its task no longer keeps a copy
--   (only a map step's tasks keep theirs until the step's output is made of them). Nothing moves:
--   tasks completed before keep their copy as history.
-- * runs.remaining_steps becomes runs.remaining_leaves: a run counts down its leaf steps (those no
--   step depends on) instead of all its steps, so that only a leaf's completion writes the run
--   (a leaf completes after all its ancestors, and every step is the ancestor of a leaf). A run
--   still started gets its count of leaf steps not completed; an ended run keeps its number.
ALTER TABLE flowreg.step_states DROP CONSTRAINT IF EXISTS step_states_run_id_fkey;
ALTER TABLE flowreg.tasks DROP CONSTRAINT IF EXISTS tasks_run_id_step_slug_fkey;
ALTER TABLE flowreg.tasks ALTER COLUMN input DROP NOT NULL;
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'flowreg'
             AND table_name = 'runs' AND column_name = 'remaining_steps') THEN
    ALTER TABLE flowreg.runs RENAME COLUMN remaining_steps TO remaining_leaves;
    UPDATE flowreg.runs r
    SET remaining_leaves = (SELECT count(*) FROM flowreg.step_states s
                            JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug
                                                       AND fs.version = r.flow_version
                                                       AND fs.step_slug = s.step_slug
                            WHERE s.run_id = r.id AND fs.is_leaf AND s.status <> 'completed')
    WHERE r.status = 'started';
  END IF;
END $$;
