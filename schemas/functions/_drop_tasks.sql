-- Takes every task of the given runs (which have ended: failed or cancelled) out of the queue.
-- The attempts of those still queued or started are added to their step states (a completed map
-- task's were added when it completed). Later results of these tasks are rejected: their rows are
-- gone. REQUIRES: the runs are locked.
--
-- Plans stable by construction: tasks are found through tasks_run_id_step_slug_task_index_key by
-- run id, step states through their primary key (`= ANY` of arrays, no join to reorder).
CREATE OR REPLACE FUNCTION flowreg._drop_tasks(p_runs uuid[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_live jsonb;  -- "<run id><step slug>" -> attempts of its tasks that were queued or started
  v_runs uuid[];
BEGIN
  WITH gone AS (
    DELETE FROM flowreg.tasks t WHERE t.run_id = ANY (p_runs)
    RETURNING t.run_id, t.step_slug, t.attempt, t.status
  )
  SELECT jsonb_object_agg(x.k, x.n), array_agg(DISTINCT x.run_id)
  INTO v_live, v_runs
  FROM (SELECT g.run_id, g.run_id::text || g.step_slug AS k, sum(g.attempt)::int AS n
        FROM gone g WHERE g.status IN ('queued', 'started') AND g.attempt > 0
        GROUP BY 1, 2) x;
  IF v_runs IS NOT NULL THEN
    UPDATE flowreg.step_states s
    SET attempts = s.attempts + (v_live ->> (s.run_id::text || s.step_slug))::int
    WHERE s.run_id = ANY (v_runs) AND v_live ? (s.run_id::text || s.step_slug);
  END IF;
END $$;

ALTER FUNCTION flowreg._drop_tasks(uuid[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
