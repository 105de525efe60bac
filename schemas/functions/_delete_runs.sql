-- Deletes the runs p_ids, which have ended, with what they keep in other tables; returns how many
-- runs it deleted. Called by prune (`runs prune`) and retain (retention, worker/retainer.hpp) with
-- a bounded batch of ids, so that each transaction stays short.
-- Step states and tasks have no foreign key to their run (see migration 0008): they are deleted
-- here, by run id (tasks through tasks_by_run), and a solo task by its run's task_id (migration
-- 0013). An ended run's tasks have left the queue already (migration 0009): these deletes are a
-- safety net. The attempts kept of its tasks (task_attempts, migration 0019) go by run id too,
-- through their primary key (whose first column is the run), and the signals sent to it
-- (migration 0026) through theirs (run, name). A run still started is never deleted, whatever
-- the caller gives.
CREATE OR REPLACE FUNCTION flowreg._delete_runs(p_ids uuid[])
RETURNS bigint LANGUAGE sql AS $$
  WITH d AS (
    DELETE FROM flowreg.runs WHERE id = ANY (p_ids) AND status <> 'started'
    RETURNING id, task_id
  ),
  s AS (DELETE FROM flowreg.step_states WHERE run_id = ANY (ARRAY(SELECT id FROM d))),
  a AS (DELETE FROM flowreg.task_attempts WHERE run_id = ANY (ARRAY(SELECT id FROM d))),
  g AS (DELETE FROM flowreg.signals WHERE run_id = ANY (ARRAY(SELECT id FROM d))),
  t AS (DELETE FROM flowreg.tasks WHERE run_id = ANY (ARRAY(SELECT id FROM d)) AND NOT solo),
  solo AS (DELETE FROM flowreg.tasks WHERE id = ANY (ARRAY(SELECT task_id FROM d))
                                        AND run_id = ANY (ARRAY(SELECT id FROM d)))
  SELECT count(*) FROM d
$$;

ALTER FUNCTION flowreg._delete_runs(uuid[]) SET jit = off;
