-- Records completions of started tasks whose attempt matches; returns the ids accepted.
-- p_batch: [{"id", "attempt", "output"}] (an id given twice: the last entry counts). A step whose
-- last task completed is complete, with its output (a single step's: its one task's; a map step's:
-- its tasks' in task order); then its dependents may start and its run may complete. A task leaves
-- the queue when done (see migration 0009): a single step's at once, a map step's when its step
-- completes; its attempts and worker are added to its step state.
-- REQUIRES: the tasks' runs are locked.
--
-- Cost per task flat in the batch size, plans stable by construction: the batch is turned into
-- jsonb objects keyed by task id and by "<run id><step slug>" (a lookup is a binary search), and
-- each UPDATE reads ONE table through `key = ANY (array)` on its primary key: there is no join
-- whose order or method the planner could choose badly, whatever the statistics. The status
-- tests are written `status || '' = ...` so that no partial index on status (tasks_leased,
-- tasks_queued) matches: the primary key is the only index such a statement can walk.
CREATE OR REPLACE FUNCTION flowreg._complete_locked(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_by_id jsonb;
  v_ids bigint[];
  v_acc bigint[];
  v_runs uuid[];
  v_per jsonb;
  v_druns uuid[];
  v_dsteps text[];
  v_mruns uuid[];
  v_msteps text[];
  v_going uuid[];
BEGIN
  SELECT jsonb_object_agg(e->>'id', e), array_agg(DISTINCT (e->>'id')::bigint)
  INTO v_by_id, v_ids
  FROM jsonb_array_elements(p_batch) e;
  IF v_ids IS NULL THEN
    RETURN '{}';
  END IF;

  WITH gone AS (
    -- A single step's task (NULL input: it reads its input when claimed) leaves the queue: its
    -- output goes to its step state (below). A map step's task keeps its output until its step
    -- completes, the step's output being made of them; then they leave too.
    DELETE FROM flowreg.tasks t
    WHERE t.id = ANY (v_ids) AND t.input IS NULL AND t.status || '' = 'started'
      AND t.attempt = (v_by_id -> t.id::text ->> 'attempt')::int
    RETURNING t.id, t.run_id, t.step_slug, t.attempt, t.worker_id,
              coalesce(v_by_id -> t.id::text -> 'output', 'null'::jsonb) AS output
  ),
  kept AS (
    UPDATE flowreg.tasks t
    SET status = 'completed', output = coalesce(v_by_id -> t.id::text -> 'output', 'null'::jsonb),
        finished_at = now(), lease_expires_at = NULL
    WHERE t.id = ANY (ARRAY(SELECT i FROM unnest(v_ids) i EXCEPT SELECT gone.id FROM gone))
      AND t.input IS NOT NULL AND t.status || '' = 'started'
      AND t.attempt = (v_by_id -> t.id::text ->> 'attempt')::int
    RETURNING t.id, t.run_id, t.step_slug, t.attempt, t.worker_id, NULL::jsonb AS output
  ),
  done AS (SELECT * FROM gone UNION ALL SELECT * FROM kept),
  per AS (
    SELECT d.run_id, d.step_slug, count(*)::int AS n, (array_agg(d.output))[1] AS output,
           sum(d.attempt)::int AS attempts, (array_agg(d.worker_id))[1] AS worker_id,
           array_agg(d.id) AS ids
    FROM done d GROUP BY 1, 2
  )
  SELECT array_agg(i), array_agg(DISTINCT per.run_id),
         jsonb_object_agg(per.run_id::text || per.step_slug,
                          jsonb_build_object('n', per.n, 'output', per.output,
                                             'attempts', per.attempts, 'worker', per.worker_id))
  INTO v_acc, v_runs, v_per
  FROM per LEFT JOIN LATERAL unnest(per.ids) i ON true;
  IF v_acc IS NULL THEN
    RETURN '{}';
  END IF;

  -- A step whose last task completed is complete, with its output: a single step's is its one
  -- task's (completed just now), a map step's its tasks' in task order.
  WITH upd AS (
    UPDATE flowreg.step_states s
    SET remaining_tasks = s.remaining_tasks
                          - (v_per -> (s.run_id::text || s.step_slug) ->> 'n')::int,
        status = CASE WHEN s.remaining_tasks
                           = (v_per -> (s.run_id::text || s.step_slug) ->> 'n')::int
                      THEN 'completed' ELSE s.status END,
        finished_at = CASE WHEN s.remaining_tasks
                                = (v_per -> (s.run_id::text || s.step_slug) ->> 'n')::int
                           THEN now() END,
        output = CASE WHEN s.remaining_tasks
                           <> (v_per -> (s.run_id::text || s.step_slug) ->> 'n')::int THEN NULL
                      WHEN s.kind = 'map' THEN
                        (SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM flowreg.tasks t
                         WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug)
                      ELSE v_per -> (s.run_id::text || s.step_slug) -> 'output' END,
        attempts = s.attempts + (v_per -> (s.run_id::text || s.step_slug) ->> 'attempts')::int,
        worker_id = v_per -> (s.run_id::text || s.step_slug) ->> 'worker'
    WHERE s.run_id = ANY (v_runs) AND v_per ? (s.run_id::text || s.step_slug)
      AND s.status = 'started'
    RETURNING s.run_id, s.step_slug, s.status, s.kind
  )
  SELECT array_agg(run_id), array_agg(step_slug),
         array_agg(run_id) FILTER (WHERE kind = 'map'),
         array_agg(run_id::text || step_slug) FILTER (WHERE kind = 'map')
  INTO v_druns, v_dsteps, v_mruns, v_msteps
  FROM upd WHERE status = 'completed';

  IF v_mruns IS NOT NULL THEN
    -- A completed map step's tasks leave the queue: its output is made of theirs.
    DELETE FROM flowreg.tasks t
    WHERE t.run_id = ANY (v_mruns) AND (t.run_id::text || t.step_slug) = ANY (v_msteps);
  END IF;

  IF v_druns IS NOT NULL THEN
    v_going := flowreg._account_steps(v_druns, v_dsteps);
    IF cardinality(v_going) > 0 THEN
      PERFORM flowreg._start_steps(v_going);
    END IF;
  END IF;
  RETURN v_acc;
END $$;

ALTER FUNCTION flowreg._complete_locked(jsonb)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
