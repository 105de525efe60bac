-- Starts a new run of a failed run's flow version with its input, linked by retry_of, from its
-- failed step: every step that completed in the failed run is written completed in the new one
-- (one skipped, migration 0027, skipped: its dependencies' outputs are the same),
-- with its output (what its dependants read as their input, a map step's being its tasks' outputs
-- in task order), 0 attempts and no worker (it does not run again), its start and end the new
-- run's start; every other step starts as in a fresh run given those completed dependencies (one
-- whose dependencies all completed is started at once: its tasks queued, or a map step over []
-- completed). A run none of whose steps completed (a one-step flow's, one failed at its root) is
-- retried as retry_run does. Returns the new run's id.
-- Errors: SQLSTATE P0002 when there is no such run, 22023 when it is still running, or when it did
-- not fail (a completed or cancelled run is retried whole, by retry_run).
--
-- The layouts are start_runs': a chain's run (migration 0017) gets a step state for each step
-- copied, completed, and the task of its first step not completed (marked chained, with its start
-- time); any other run a step state per step, its ready steps then started by _start_steps. (A
-- one-step flow's failed run has no completed step: retried by start_runs, the layout of 0012.)
-- The failed run is locked (FOR KEY SHARE) so that a prune cannot delete it between the reads of
-- its steps; an ended run is written by nothing else. The new run is the transaction's own.
CREATE OR REPLACE FUNCTION flowreg.retry_run_from_failed(p_run uuid)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
  v_run flowreg.runs;
  v_new uuid;
  v_done text[];
  v_steps int;
  v_leaves int;
  v_chained boolean;
BEGIN
  SELECT * INTO v_run FROM flowreg.runs WHERE id = p_run FOR KEY SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('run %s does not exist', p_run);
  END IF;
  IF v_run.status = 'started' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = format('run %s is still running: cancel it before retrying it', p_run);
  END IF;
  IF v_run.status <> 'failed' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = format('run %s is %s, not failed: it has no failed step to retry from (retry it '
                       'as a new run)', p_run, v_run.status);
  END IF;

  -- The steps that completed: each has a step state in every layout (a one-step flow's run has
  -- none, and its failed step did not complete).
  SELECT array_agg(s.step_slug) INTO v_done
  FROM flowreg.step_states s WHERE s.run_id = p_run AND s.status IN ('completed', 'skipped');
  IF v_done IS NULL THEN
    SELECT s.run_id INTO v_new
    FROM flowreg.start_runs(v_run.flow_slug, v_run.flow_version, ARRAY[v_run.input], NULL, p_run) s;
    RETURN v_new;
  END IF;

  -- The flow version's shape, as start_runs reads it; its leaves not completed are left to run.
  SELECT count(*), count(*) FILTER (WHERE fs.is_leaf AND fs.step_slug <> ALL (v_done)),
         count(*) > 1 AND bool_and(fs.kind = 'single' AND NOT fs.checked)
           AND bool_and(cardinality(fs.deps) <= 1) AND count(*) FILTER (WHERE fs.is_leaf) = 1
  INTO v_steps, v_leaves, v_chained
  FROM flowreg.flow_steps fs
  WHERE fs.flow_slug = v_run.flow_slug AND fs.version = v_run.flow_version;
  IF v_steps = 0 THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002',
      MESSAGE = format('flow %L version %L is not stored', v_run.flow_slug, v_run.flow_version);
  END IF;

  -- A time-ordered id (UUID version 7), as start_runs makes it.
  v_new := encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
             substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
             FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
  INSERT INTO flowreg.runs (id, flow_slug, flow_version, input, remaining_leaves, retry_of, chained,
                            priority)
  VALUES (v_new, v_run.flow_slug, v_run.flow_version, v_run.input, v_leaves, p_run, v_chained,
          v_run.priority);

  -- The completed steps, copied (an old run's step states are read by its key).
  INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps, status,
                                   remaining_tasks, task_count, output, started_at, finished_at,
                                   attempts, worker_id)
  SELECT v_new, s.step_slug, s.step_index, s.kind, 0, s.status, 0, s.task_count, s.output,
         now(), now(), 0, NULL
  FROM flowreg.step_states s WHERE s.run_id = p_run AND s.status IN ('completed', 'skipped');

  IF v_chained THEN
    -- A chain's first step not completed (its one dependency completed, or none): its task, queued.
    INSERT INTO flowreg.tasks (run_id, step_slug, task_index, flow_slug, flow_version, timeout_ms,
                               solo, chained, created_at, priority, gate)
    SELECT v_new, fs.step_slug, 0, v_run.flow_slug, v_run.flow_version, fs.timeout_ms, false, true,
           now(), coalesce(v_run.priority, fs.priority),
           CASE WHEN fs.gate_prefix IS NOT NULL
                THEN flowreg._gate_of(fs.gate_prefix, v_run.input, fs.gate_path) END
    FROM flowreg.flow_steps fs
    WHERE fs.flow_slug = v_run.flow_slug AND fs.version = v_run.flow_version
      AND fs.step_slug <> ALL (v_done) AND fs.deps <@ v_done;
    PERFORM pg_notify('flowreg_runs', v_new::text || ' started');
    PERFORM pg_notify('flowreg_tasks', v_run.flow_slug);
    RETURN v_new;
  END IF;

  -- Any other flow: the other steps, created, waiting for their dependencies not completed; then
  -- those with none left start, as a completion would start them.
  INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps, status)
  SELECT v_new, fs.step_slug, fs.step_index, fs.kind,
         (SELECT count(*) FROM unnest(fs.deps) AS d WHERE d <> ALL (v_done)), 'created'
  FROM flowreg.flow_steps fs
  WHERE fs.flow_slug = v_run.flow_slug AND fs.version = v_run.flow_version
    AND fs.step_slug <> ALL (v_done);
  PERFORM pg_notify('flowreg_runs', v_new::text || ' started');
  PERFORM flowreg._start_steps(ARRAY[v_new]);
  RETURN v_new;
END $$;

-- Plans stable by construction, as in the functions it calls: every table read by key
-- (tests/pg/hot_path_test.cpp).
ALTER FUNCTION flowreg.retry_run_from_failed(uuid)
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
