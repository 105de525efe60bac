-- flowreg migration 0004: fewer writes per completed task.
--
-- Measured with pg_stat_statements on a worker draining 20,000 single-step runs (issue 6 closing
-- note): PostgreSQL's CPU per completed task is what limits a worker, and most of it went to row
-- versions and index entries that this migration avoids:
--
-- * A run's row was written three times when its last step completed: locked, its
--   remaining_steps decremented (_steps_completed), then marked completed (_start_steps). The
--   second UPDATE of a row this transaction already updated also fired the foreign-key check on
--   flows. Now the decrement that reaches zero completes the run in the same UPDATE, and
--   _start_steps runs only for runs that still have steps to start.
-- * runs_finished indexed finished_at, so completing a run could never be a HOT update: it added
--   an entry to every index of runs (4). prune, its only user, now finds old runs through
--   runs_by_created (a run finished before a time was created before it).
-- * runs, step_states and tasks are updated a few times in their life; with full pages
--   (fillfactor 100) an update cannot stay on its page, so even an update that changes no indexed
--   column was not HOT, and each update of a task (claim, completion) moved it to another page.
--   They now keep room on each page (applies to pages filled from now on). Space measured after
--   20,000 single-step runs (worker_bench): tasks 15 MB (13 MB before), runs 6.7 MB (8.1 MB: the
--   non-HOT updates left dead copies on new pages), step_states 5.0 MB (5.9 MB).
-- * Some statements inside the lifecycle functions were planned again on every call: PL/pgSQL
--   keeps a custom plan while it estimates the generic one dearer. In a worker draining 20,000
--   tasks, _claim's claim query was planned on every call (0.4 ms of its 1.6 ms). In work() calls
--   of one task each (2.6 ms a call), so were _account_steps' UPDATE (0.74 ms), complete_tasks'
--   step UPDATE (0.31 ms) and _lock_runs_of (0.13 ms). _account_steps, _claim and _lock_runs_of
--   now keep one generic plan per session. A generic plan is made once, from the statistics of
--   that moment, and kept: made on empty tables it scans runs and tasks sequentially, forever. So
--   these functions also turn sequential scans off: every statement in them is driven by primary
--   keys, flow keys or the queue indexes, and with sequential scans off the generic plan is that
--   index walk whatever the table sizes (EXPLAIN on a freshly migrated, empty database; and
--   tests/pg/run_store_test.cpp counts the scans).
-- * A single-task step's output is its task's output: taken from the completing UPDATE itself
--   instead of being read back from tasks.

DROP INDEX flowreg.runs_finished;
ALTER TABLE flowreg.runs SET (fillfactor = 50);
ALTER TABLE flowreg.step_states SET (fillfactor = 60);
ALTER TABLE flowreg.tasks SET (fillfactor = 50);

CREATE OR REPLACE FUNCTION flowreg.prune(p_older_than interval)
RETURNS bigint LANGUAGE sql AS $$
  WITH d AS (
    DELETE FROM flowreg.runs
    WHERE created_at < now() - p_older_than AND finished_at < now() - p_older_than
      AND status <> 'started'
    RETURNING 1
  )
  SELECT count(*) FROM d
$$;

-- Accounts for completed steps: their dependents have one dependency less, their runs one step
-- less, and a run without steps left is completed (its output: its leaf steps' outputs) and
-- announced. Returns the runs given that are still started, the ones where more steps may be
-- ready. REQUIRES: the runs are locked, and the steps' outputs are stored.
CREATE FUNCTION flowreg._account_steps(p_runs uuid[], p_steps text[])
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
  v_going uuid[];
  v_done uuid[];
BEGIN
  WITH d AS (SELECT * FROM unnest(p_runs, p_steps) AS x(run_id, step_slug)),
  deps AS (
    UPDATE flowreg.step_states s SET remaining_deps = s.remaining_deps - x.n
    FROM (SELECT d.run_id, fd.step_slug, count(*)::int AS n
          FROM d JOIN flowreg.runs r ON r.id = d.run_id
          JOIN flowreg.flow_deps fd ON fd.flow_slug = r.flow_slug AND fd.version = r.flow_version
                                    AND fd.dep_slug = d.step_slug
          GROUP BY 1, 2) x
    WHERE s.run_id = ANY (p_runs) AND s.run_id = x.run_id AND s.step_slug = x.step_slug
  ),
  rs AS (
    UPDATE flowreg.runs r
    SET remaining_steps = r.remaining_steps - x.n,
        status = CASE WHEN r.remaining_steps = x.n THEN 'completed' ELSE r.status END,
        finished_at = CASE WHEN r.remaining_steps = x.n THEN now() ELSE r.finished_at END,
        output = CASE WHEN r.remaining_steps <> x.n THEN r.output
                      ELSE coalesce(
                        (SELECT jsonb_object_agg(s.step_slug, s.output)
                         FROM flowreg.step_states s
                         JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug
                                                    AND fs.version = r.flow_version
                                                    AND fs.step_slug = s.step_slug
                         WHERE s.run_id = r.id AND fs.is_leaf), '{}'::jsonb) END
    FROM (SELECT run_id, count(*)::int AS n FROM d GROUP BY 1) x
    WHERE r.id = ANY (p_runs) AND r.id = x.run_id AND r.status = 'started'
    RETURNING r.id, r.status
  )
  SELECT array_agg(rs.id) FILTER (WHERE rs.status = 'started'),
         array_agg(rs.id) FILTER (WHERE rs.status = 'completed')
  INTO v_going, v_done
  FROM rs;
  IF v_done IS NOT NULL THEN
    PERFORM pg_notify('flowreg_runs', id::text || ' completed') FROM unnest(v_done) AS id;
  END IF;
  RETURN coalesce(v_going, '{}');
END $$;

-- 0002's entry point for the callers that go on with _start_steps (which completes the runs left
-- without steps in any case).
CREATE OR REPLACE FUNCTION flowreg._steps_completed(p_runs uuid[], p_steps text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM flowreg._account_steps(p_runs, p_steps);
END $$;

-- Records task completions. p_batch: [{"id", "attempt", "output"}].
-- Returns the ids rejected (attempt no longer current, or the task is not started).
CREATE OR REPLACE FUNCTION flowreg.complete_tasks(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_attempts int[];
  v_outputs jsonb[];
  v_acc bigint[];
  v_truns uuid[];
  v_tsteps text[];
  v_touts jsonb[];
  v_druns uuid[];
  v_dsteps text[];
  v_going uuid[];
BEGIN
  SELECT array_agg(b.id), array_agg(b.attempt), array_agg(coalesce(b.output, 'null'::jsonb))
  INTO v_ids, v_attempts, v_outputs
  FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int, output jsonb);
  IF v_ids IS NULL THEN
    RETURN '{}';
  END IF;
  PERFORM flowreg._lock_runs_of(v_ids);

  WITH done AS (
    UPDATE flowreg.tasks t
    SET status = 'completed', output = b.output, finished_at = now(), lease_expires_at = NULL
    FROM unnest(v_ids, v_attempts, v_outputs) AS b(id, attempt, output)
    WHERE t.id = ANY (v_ids) AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
    RETURNING t.id, t.run_id, t.step_slug, t.output
  )
  SELECT array_agg(id), array_agg(run_id), array_agg(step_slug), array_agg(output)
  INTO v_acc, v_truns, v_tsteps, v_touts
  FROM done;
  IF v_acc IS NULL THEN
    RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i ORDER BY 1);
  END IF;

  -- A step whose last task completed is complete, with its output: a single step's is its one
  -- task's (completed just now), a map step's its tasks' in task order.
  WITH per AS (
    SELECT run_id, step_slug, count(*)::int AS n, (array_agg(output))[1] AS output
    FROM unnest(v_truns, v_tsteps, v_touts) AS x(run_id, step_slug, output) GROUP BY 1, 2
  ),
  upd AS (
    UPDATE flowreg.step_states s
    SET remaining_tasks = s.remaining_tasks - per.n,
        status = CASE WHEN s.remaining_tasks = per.n THEN 'completed' ELSE s.status END,
        finished_at = CASE WHEN s.remaining_tasks = per.n THEN now() END,
        output = CASE WHEN s.remaining_tasks <> per.n THEN NULL
                      WHEN s.kind = 'map' THEN
                        (SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM flowreg.tasks t
                         WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug)
                      ELSE per.output END
    FROM per
    WHERE s.run_id = ANY (v_truns) AND s.run_id = per.run_id AND s.step_slug = per.step_slug
      AND s.status = 'started'
    RETURNING s.run_id, s.step_slug, s.status
  )
  SELECT array_agg(run_id), array_agg(step_slug) INTO v_druns, v_dsteps
  FROM upd WHERE status = 'completed';

  IF v_druns IS NOT NULL THEN
    v_going := flowreg._account_steps(v_druns, v_dsteps);  -- each run once
    IF cardinality(v_going) > 0 THEN
      PERFORM flowreg._start_steps(v_going);
    END IF;
  END IF;
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (v_acc) ORDER BY 1);
END $$;

-- Generic plans, index-driven (see the top of this file).
ALTER FUNCTION flowreg._claim(text, jsonb, int, bigint)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION flowreg._account_steps(uuid[], text[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION flowreg._lock_runs_of(bigint[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
