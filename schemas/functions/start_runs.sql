-- Creates runs of a stored flow version, one per input, and starts their root steps.
-- A key already used for that flow slug returns the run that used it (created = false).
-- Errors: SQLSTATE P0002 when the flow version is not stored, 22023 when p_retry_of is unknown.
-- With p_parents (migration 0028: _start_children), the runs are child runs: input i's run is a
-- child of run p_parents[i]'s flow step p_parent_steps[i], at its element p_parent_indexes[i],
-- nested p_depths[i] deep; its id is greater than its parent's (a time-ordered id of the
-- millisecond after its parent's when the clock has not passed it), so that every function locks
-- a parent before its children.
--
-- One statement creates the runs, their step states and the tasks of their single root steps
-- (a root single step's state is written 'started' at once, not created and then updated; its
-- task does not copy the run's input: the claim reads it from the run). A flow of one single step
-- gets no step state: its run keeps the step's attempts and worker (runs.attempts, set to 0,
-- marks that layout: migration 0012), and its task, solo, is named by its run's task_id
-- (migration 0013); a chain's run (migration 0017: single steps a -> b -> ...) gets no step state
-- either (they are written as its steps end), and its root step's task is marked chained, with its
-- start time;
-- _start_steps runs only when the flow has a map root step (its task count depends on the input),
-- a sleep or wait root step (migrations 0025, 0026) or a root step with a condition (migration
-- 0027: it may be skipped); a flow with a condition has neither of the two layouts above.
-- Plans stable by construction: no sequential scan, hash join or merge join (see _start_steps).
-- One generic plan per session, made at the first call: its shape is the same for 1 input or
-- 1000 (nested loops over primary keys), and planning the statement anew at each call cost more
-- than running it for one run (pgbench, one run per call: 0.120 ms a call, 0.107 ms generic).
CREATE OR REPLACE FUNCTION flowreg.start_runs(p_slug text, p_version text, p_inputs jsonb[],
                                              p_keys text[] DEFAULT NULL,
                                              p_retry_of uuid DEFAULT NULL,
                                              p_parents uuid[] DEFAULT NULL,
                                              p_parent_steps text[] DEFAULT NULL,
                                              p_parent_indexes int[] DEFAULT NULL,
                                              p_depths int[] DEFAULT NULL)
RETURNS TABLE (run_id uuid, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_steps int;
  v_map_root boolean;
  v_single_root boolean;
  v_new uuid[];
BEGIN
  IF p_retry_of IS NOT NULL AND NOT EXISTS (SELECT 1 FROM flowreg.runs WHERE id = p_retry_of) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = format('run %s (retried) does not exist', p_retry_of);
  END IF;

  -- A run id is time-ordered (UUID version 7: milliseconds since 1970, then random bits), so new
  -- runs go to the right end of runs_pkey and of the step and task indexes keyed by run id, not to
  -- a random page of each (fewer pages dirtied, fewer full-page images after a checkpoint). The
  -- idempotency check (ON CONFLICT: a speculative insertion, one more WAL record per row) is paid
  -- only by the runs that have a key.
  --
  -- The flow version's steps are read by the statement that inserts the runs, and no run is
  -- inserted when it sees none: runs have no foreign key to flows (migration 0011), and a delete
  -- of the version that commits while this statement waits for its lock on runs is seen here
  -- (_guard_flow_delete).
  WITH meta AS MATERIALIZED (
    SELECT count(*) AS steps, count(*) FILTER (WHERE is_leaf) AS leaves,
           -- A root step started by _start_steps: a map, sleep or wait step, or one with a
           -- condition (migrations 0025 to 0027).
           coalesce(bool_or((kind <> 'single' OR checked) AND cardinality(deps) = 0), false)
             AS map_root,
           coalesce(bool_or(kind = 'single' AND NOT checked AND cardinality(deps) = 0), false)
             AS single_root,
           count(*) = 1 AND bool_and(kind = 'single' AND NOT checked) AS one_row,
           count(*) > 1 AND bool_and(kind = 'single' AND NOT checked)
             AND bool_and(cardinality(deps) <= 1) AND count(*) FILTER (WHERE is_leaf) = 1
             AS chained
    FROM flowreg.flow_steps WHERE flow_slug = p_slug AND version = p_version
  ),
  given AS (
    SELECT x.input, x.key, x.parent, x.parent_step, x.parent_index, x.depth,
           encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
             substring(int8send(greatest((extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                                         -- A child's: after its parent's millisecond (the
                                         -- first 48 bits of its id).
                                         ('x' || translate(left(x.parent::text, 13), '-', ''))
                                           ::bit(48)::bigint + 1)) FROM 3)
             FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid AS id,
           -- A one-step flow's run names its task (migration 0013): the task's id comes first.
           CASE WHEN (SELECT m.one_row FROM meta m) THEN nextval('flowreg.tasks_id_seq') END
             AS task_id
    -- (unnest pads the arrays not given, NULL, with NULLs.)
    FROM unnest(p_inputs, coalesce(p_keys, array_fill(NULL::text, ARRAY[cardinality(p_inputs)])),
                p_parents, p_parent_steps, p_parent_indexes, p_depths)
      AS x(input, key, parent, parent_step, parent_index, depth)
    WHERE (SELECT m.steps FROM meta m) > 0
  ),
  ins_plain AS (
    INSERT INTO flowreg.runs (id, flow_slug, flow_version, input, remaining_leaves, retry_of,
                              attempts, task_id, chained, parent_run_id, parent_step,
                              parent_index, depth)
    SELECT g.id, p_slug, p_version, g.input, m.leaves, p_retry_of,
           CASE WHEN m.one_row THEN 0 END, g.task_id, m.chained, g.parent, g.parent_step,
           g.parent_index, g.depth
    FROM given g CROSS JOIN meta m WHERE g.key IS NULL
    RETURNING id, task_id, input
  ),
  ins_keyed AS (
    INSERT INTO flowreg.runs (id, flow_slug, flow_version, input, remaining_leaves, idempotency_key,
                              retry_of, attempts, task_id, chained, parent_run_id, parent_step,
                              parent_index, depth)
    SELECT g.id, p_slug, p_version, g.input, m.leaves, g.key, p_retry_of,
           CASE WHEN m.one_row THEN 0 END, g.task_id, m.chained, g.parent, g.parent_step,
           g.parent_index, g.depth
    FROM given g CROSS JOIN meta m WHERE g.key IS NOT NULL
    ON CONFLICT (flow_slug, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, task_id, input
  ),
  ins AS (SELECT * FROM ins_plain UNION ALL SELECT * FROM ins_keyed),
  st AS (
    INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps, status,
                                     remaining_tasks, task_count, started_at)
    SELECT ins.id, fs.step_slug, fs.step_index, fs.kind, cardinality(fs.deps), x.status,
           x.n, x.n, CASE WHEN x.n = 1 THEN now() END
    FROM ins CROSS JOIN flowreg.flow_steps fs
    CROSS JOIN LATERAL (
      SELECT CASE WHEN cardinality(fs.deps) = 0 AND fs.kind = 'single' AND NOT fs.checked
                  THEN 'started' ELSE 'created' END AS status,
             CASE WHEN cardinality(fs.deps) = 0 AND fs.kind = 'single' AND NOT fs.checked
                  THEN 1 ELSE 0 END AS n) x
    WHERE fs.flow_slug = p_slug AND fs.version = p_version
      AND NOT (SELECT m.one_row OR m.chained FROM meta m)
  ),
  tk AS (
    INSERT INTO flowreg.tasks (id, run_id, step_slug, task_index, flow_slug, flow_version,
                               timeout_ms, solo, chained, created_at, priority, gate)
    OVERRIDING SYSTEM VALUE
    SELECT coalesce(ins.task_id, nextval('flowreg.tasks_id_seq')), ins.id, fs.step_slug, 0,
           p_slug, p_version, fs.timeout_ms, ins.task_id IS NOT NULL, m.chained,
           CASE WHEN m.chained THEN now() END, fs.priority,
           -- Its gate (a concurrency limit, migration 0023), NULL for most.
           CASE WHEN fs.gate_prefix IS NOT NULL
                THEN flowreg._gate_of(fs.gate_prefix, ins.input, fs.gate_path) END
    FROM ins CROSS JOIN meta m CROSS JOIN flowreg.flow_steps fs
    WHERE fs.flow_slug = p_slug AND fs.version = p_version AND cardinality(fs.deps) = 0
      AND fs.kind = 'single' AND NOT fs.checked
  )
  SELECT (SELECT array_agg(ins.id) FROM ins), m.steps, m.map_root, m.single_root
  INTO v_new, v_steps, v_map_root, v_single_root
  FROM meta m;
  IF v_steps = 0 THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002',
      MESSAGE = format('flow %L version %L is not stored', p_slug, p_version);
  END IF;

  IF v_new IS NOT NULL THEN
    PERFORM pg_notify('flowreg_runs', id::text || ' started') FROM unnest(v_new) AS id;
    IF v_single_root THEN
      PERFORM pg_notify('flowreg_tasks', p_slug);
    END IF;
    IF v_map_root THEN
      PERFORM flowreg._start_steps(v_new);
    END IF;
  END IF;

  RETURN QUERY SELECT id, true FROM unnest(v_new) AS id;
  IF p_keys IS NOT NULL THEN
    -- One probe of runs_idempotency per key, on both its columns. Planned as a join (or written
    -- `idempotency_key = ANY (p_keys)`), statistics of a time with few keyed runs made the key a
    -- filter over every keyed run of the flow; OFFSET 0 keeps the probe a subquery run per key.
    RETURN QUERY
      SELECT r.id, false FROM (SELECT DISTINCT k FROM unnest(p_keys) AS k) AS x
      CROSS JOIN LATERAL (SELECT q.id FROM flowreg.runs q
                          WHERE q.flow_slug = p_slug AND q.idempotency_key = x.k OFFSET 0) r
      WHERE r.id <> ALL (coalesce(v_new, '{}'));
  END IF;
END $$;

ALTER FUNCTION flowreg.start_runs(text, text, jsonb[], text[], uuid, uuid[], text[], int[], int[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
  SET enable_mergejoin = off SET jit = off;
