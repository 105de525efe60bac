-- Takes every task of the given runs (which have ended: failed or cancelled) out of the queue.
-- The attempts of those still queued or started are added to their step states, or to their run
-- when it keeps its one step's state (migration 0012) (a completed map task's were added when it
-- completed). A chain's run (migration 0017) has no step state for the step whose task was queued
-- or started: it is written now, cancelled, with those attempts. Later results of these tasks are
-- rejected: their rows are gone. Their wait steps stop waiting for events (migration 0026: their
-- event_waits rows go, by primary key). REQUIRES: the runs are locked.
--
-- Plans stable by construction: tasks are found through tasks_by_run by run id, and a solo task
-- (a one-step flow's, migration 0013) through tasks_pkey by its run's task_id; step states and
-- runs through their primary keys (`= ANY (ARRAY[row.key])` probes driven by the steps found, no
-- join to reorder).
CREATE OR REPLACE FUNCTION flowreg._drop_tasks(p_runs uuid[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  -- Per step with tasks that were queued or started: its run, slug and their attempts.
  v_runs uuid[];
  v_steps text[];
  v_n int[];
BEGIN
  DELETE FROM flowreg.event_waits w WHERE w.run_id = ANY (p_runs);
  WITH by_run AS (
    DELETE FROM flowreg.tasks t WHERE t.run_id = ANY (p_runs) AND NOT t.solo
    RETURNING t.run_id, t.step_slug, t.attempt, t.status, t.chained, t.created_at, t.flow_slug,
              t.flow_version
  ),
  solo AS (
    -- (A run keeps its task_id after its task is gone: the task found must be the run's.)
    DELETE FROM flowreg.tasks t
    WHERE t.id = ANY (ARRAY(SELECT r.task_id FROM flowreg.runs r
                            WHERE r.id = ANY (p_runs) AND r.task_id IS NOT NULL))
      AND t.run_id = ANY (p_runs)
    RETURNING t.run_id, t.step_slug, t.attempt, t.status, t.chained, t.created_at, t.flow_slug,
              t.flow_version
  ),
  chain_st AS (
    INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps, status,
                                     remaining_tasks, task_count, started_at, finished_at,
                                     attempts)
    SELECT g.run_id, g.step_slug, fs.step_index, 'single', 0, 'cancelled', 1, 1, g.created_at,
           now(), g.attempt
    FROM by_run g
    CROSS JOIN LATERAL (SELECT f.step_index FROM flowreg.flow_steps f
                        WHERE f.flow_slug = g.flow_slug AND f.version = g.flow_version
                          AND f.step_slug = g.step_slug OFFSET 0) fs
    WHERE g.chained AND g.status IN ('queued', 'started')
  ),
  gone AS (SELECT * FROM by_run UNION ALL SELECT * FROM solo)
  SELECT array_agg(x.run_id), array_agg(x.step_slug), array_agg(x.n)
  INTO v_runs, v_steps, v_n
  FROM (SELECT g.run_id, g.step_slug, sum(g.attempt)::int AS n
        FROM gone g WHERE g.status IN ('queued', 'started') AND g.attempt > 0 AND NOT g.chained
        GROUP BY 1, 2) x;
  IF v_runs IS NOT NULL THEN
    WITH x AS (SELECT * FROM unnest(v_runs, v_steps, v_n) AS x(run_id, step_slug, n)),
    st AS (
      UPDATE flowreg.step_states s SET attempts = s.attempts + x.n
      FROM x WHERE s.run_id = ANY (ARRAY[x.run_id]) AND s.step_slug = ANY (ARRAY[x.step_slug])
    )
    UPDATE flowreg.runs r SET attempts = r.attempts + x.n
    FROM x WHERE r.id = ANY (ARRAY[x.run_id]) AND r.attempts IS NOT NULL;
  END IF;
END $$;

ALTER FUNCTION flowreg._drop_tasks(uuid[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
  SET enable_mergejoin = off SET jit = off;
