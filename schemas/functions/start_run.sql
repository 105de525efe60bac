-- Creates one run of a stored flow version and starts it: start_runs for one input, with a short
-- path for the commonest start, one run of a flow of one single step without an idempotency key
-- or a retried run. Returns (run id, created) like start_runs; its errors are start_runs'.
--
-- The short path is one statement that reads the version's one step, inserts the run (the layout of
-- migration 0012: no step state, attempts 0) and its task (solo, named by the run's task_id:
-- migration 0013), and sends start_runs' notifications. Every other start (with a key or a retried
-- run, of a flow of several steps or of a map step, of a version not stored) goes on to start_runs;
-- RunStore::start_run calls start_runs itself when it has a key or a retried run. The short path
-- writes the rows start_runs writes, in less server time: 0.103 ms a call against 0.140-0.155 back
-- to back, 0.219-0.235 against 0.303-0.313 with calls 5 ms apart (bench/work_cost.sh --start 300
-- --rounds 2), since start_runs' one statement initializes the plan nodes of every shape, and sums
-- the version's steps, for one row.
-- As in start_runs, the flow version's steps are read by the statement that inserts the run:
-- a delete of the version that commits while it waits for its lock on runs is seen here.
-- Plans stable by construction, as start_runs': one generic plan per session, primary keys only.
CREATE OR REPLACE FUNCTION flowreg.start_run(p_slug text, p_version text, p_input jsonb,
                                             p_key text DEFAULT NULL,
                                             p_retry_of uuid DEFAULT NULL)
RETURNS TABLE (run_id uuid, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_id uuid;
BEGIN
  IF p_key IS NULL AND p_retry_of IS NULL THEN
    WITH one AS (
      -- The task's id, taken first: the run names it (runs.task_id, migration 0013).
      SELECT fs.step_slug, fs.timeout_ms, fs.priority, nextval('flowreg.tasks_id_seq') AS task_id,
             -- Its gate (a concurrency limit, migration 0023), NULL for most.
             CASE WHEN fs.gate_prefix IS NOT NULL
                  THEN flowreg._gate_of(fs.gate_prefix, p_input, fs.gate_path) END AS gate
      FROM flowreg.flow_steps fs
      WHERE fs.flow_slug = p_slug AND fs.version = p_version AND fs.kind = 'single'
        AND NOT fs.checked AND NOT EXISTS (SELECT FROM flowreg.flow_steps o
                        WHERE o.flow_slug = p_slug AND o.version = p_version
                          AND o.step_slug <> fs.step_slug)
    ),
    ins AS (
      -- A time-ordered id (UUID version 7), as start_runs makes it.
      INSERT INTO flowreg.runs (id, flow_slug, flow_version, input, remaining_leaves, attempts,
                                task_id)
      SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
               substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
               FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid,
             p_slug, p_version, p_input, 1, 0, one.task_id
      FROM one
      RETURNING id
    ),
    tk AS (
      INSERT INTO flowreg.tasks (id, run_id, step_slug, task_index, flow_slug, flow_version,
                                 timeout_ms, solo, priority, gate)
      OVERRIDING SYSTEM VALUE
      SELECT one.task_id, ins.id, one.step_slug, 0, p_slug, p_version, one.timeout_ms, true,
             one.priority, one.gate
      FROM ins CROSS JOIN one
    )
    SELECT ins.id INTO v_id FROM ins;
    IF v_id IS NOT NULL THEN
      PERFORM pg_notify('flowreg_runs', v_id::text || ' started'),
              pg_notify('flowreg_tasks', p_slug);
      run_id := v_id;
      created := true;
      RETURN NEXT;
      RETURN;
    END IF;
  END IF;

  RETURN QUERY SELECT x.run_id, x.created
               FROM flowreg.start_runs(p_slug, p_version, ARRAY[p_input],
                                       CASE WHEN p_key IS NOT NULL THEN ARRAY[p_key] END,
                                       p_retry_of) AS x;
END $$;

ALTER FUNCTION flowreg.start_run(text, text, jsonb, text, uuid)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
  SET enable_mergejoin = off SET jit = off;
