-- flowreg migration 0002: flow versions, runs, step states and tasks, and the functions that drive
-- them. Every lifecycle call of core/src/store/run_store.cpp is ONE statement (a function call
-- below, sent in autocommit: one round trip, one transaction), whatever the batch size.
--
-- Semantics follow pgflow (see shared notes), with its defects fixed:
--   * a claim leases a task for ITS STEP's timeout (tasks.timeout_ms), renew() extends by the same;
--   * an expired lease is picked up by the next claim of that flow (no reaper needed): requeued at
--     once when attempts remain, else the step and the run fail;
--   * retry n (n = 1 for the first retry) waits min(max_delay, base_delay * 2^(n-1) * J), with J
--     uniform in [0.8, 1.2] (+-20% jitter): the first retry waits ~base_delay, and the cap is a
--     true cap (never exceeded);
--   * completions and failures are fenced by the attempt number: one whose attempt no longer
--     matches a started task is rejected, so each task's result is recorded exactly once.
--
-- Lock order, everywhere, to stay deadlock-free: runs (by id), then tasks, then step states.
-- Claims never wait: they take tasks (and, for exhausted leases, runs) with SKIP LOCKED.
--
-- Notifications: channel flowreg_tasks, payload the flow slug, when tasks become ready (a step
-- starts, a retry is due at once, a lease expired); channel flowreg_runs, payload
-- '<run id> <status>', when a run starts, completes, fails or is cancelled.

-- Flow definitions: immutable per (slug, version). Runs point at the version they started with.
CREATE TABLE flowreg.flows (
  slug text NOT NULL,
  version text NOT NULL,
  definition jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (slug, version)
);

CREATE TABLE flowreg.flow_steps (
  flow_slug text NOT NULL,
  version text NOT NULL,
  step_slug text NOT NULL,
  step_index int NOT NULL,
  kind text NOT NULL CHECK (kind IN ('single', 'map')),
  handler text NOT NULL,
  deps text[] NOT NULL,
  is_leaf boolean NOT NULL,
  max_attempts int NOT NULL CHECK (max_attempts >= 1),
  base_delay_ms bigint NOT NULL CHECK (base_delay_ms >= 0),
  max_delay_ms bigint NOT NULL CHECK (max_delay_ms >= 0),
  timeout_ms bigint NOT NULL CHECK (timeout_ms >= 1),
  PRIMARY KEY (flow_slug, version, step_slug),
  FOREIGN KEY (flow_slug, version) REFERENCES flowreg.flows ON DELETE CASCADE
);

-- One row per edge: dep_slug must complete before step_slug starts.
CREATE TABLE flowreg.flow_deps (
  flow_slug text NOT NULL,
  version text NOT NULL,
  dep_slug text NOT NULL,
  step_slug text NOT NULL,
  PRIMARY KEY (flow_slug, version, dep_slug, step_slug),
  FOREIGN KEY (flow_slug, version, dep_slug) REFERENCES flowreg.flow_steps ON DELETE CASCADE,
  FOREIGN KEY (flow_slug, version, step_slug) REFERENCES flowreg.flow_steps ON DELETE CASCADE
);

CREATE TABLE flowreg.runs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  flow_slug text NOT NULL,
  flow_version text NOT NULL,
  status text NOT NULL DEFAULT 'started'
    CHECK (status IN ('started', 'completed', 'failed', 'cancelled')),
  input jsonb NOT NULL,
  output jsonb,
  error text,
  remaining_steps int NOT NULL,
  idempotency_key text,
  retry_of uuid REFERENCES flowreg.runs ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  FOREIGN KEY (flow_slug, flow_version) REFERENCES flowreg.flows
);
CREATE UNIQUE INDEX runs_idempotency ON flowreg.runs (flow_slug, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_flow ON flowreg.runs (flow_slug, created_at DESC);
CREATE INDEX runs_by_created ON flowreg.runs (created_at DESC);
CREATE INDEX runs_finished ON flowreg.runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX runs_retry_of ON flowreg.runs (retry_of) WHERE retry_of IS NOT NULL;

CREATE TABLE flowreg.step_states (
  run_id uuid NOT NULL REFERENCES flowreg.runs ON DELETE CASCADE,
  step_slug text NOT NULL,
  step_index int NOT NULL,
  kind text NOT NULL,
  status text NOT NULL DEFAULT 'created'
    CHECK (status IN ('created', 'started', 'completed', 'failed', 'cancelled')),
  remaining_deps int NOT NULL,
  remaining_tasks int NOT NULL DEFAULT 0,
  task_count int NOT NULL DEFAULT 0,
  output jsonb,
  error text,
  started_at timestamptz,
  finished_at timestamptz,
  PRIMARY KEY (run_id, step_slug)
);

CREATE TABLE flowreg.tasks (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  run_id uuid NOT NULL,
  step_slug text NOT NULL,
  task_index int NOT NULL,
  flow_slug text NOT NULL,
  flow_version text NOT NULL,
  status text NOT NULL DEFAULT 'queued'
    CHECK (status IN ('queued', 'started', 'completed', 'failed', 'cancelled')),
  attempt int NOT NULL DEFAULT 0,  -- attempts begun so far; the claim makes it 1 the first time
  max_attempts int NOT NULL,
  base_delay_ms bigint NOT NULL,
  max_delay_ms bigint NOT NULL,
  timeout_ms bigint NOT NULL,
  input jsonb NOT NULL,
  output jsonb,
  error text,        -- the last attempt's error
  error_at timestamptz,  -- when it was recorded (a retry's delay is available_at - error_at)
  worker_id text,    -- the last claimer
  available_at timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,  -- of the last attempt
  finished_at timestamptz,
  UNIQUE (run_id, step_slug, task_index),
  FOREIGN KEY (run_id, step_slug) REFERENCES flowreg.step_states ON DELETE CASCADE
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
-- The hot claim index holds queued tasks only: finished work leaves it (and vacuum removes the dead
-- entries), so a claim does not step over the history of completed tasks.
CREATE INDEX tasks_queued ON flowreg.tasks (flow_slug, flow_version, available_at)
  WHERE status = 'queued';
CREATE INDEX tasks_leased ON flowreg.tasks (lease_expires_at) WHERE status = 'started';

ALTER TABLE flowreg.runs SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE flowreg.step_states SET (autovacuum_vacuum_scale_factor = 0.02);

-- Retry n waits min(max, base * 2^(n-1) * U[0.8, 1.2]) milliseconds.
CREATE FUNCTION flowreg.retry_delay_ms(p_base bigint, p_max bigint, p_retry int)
RETURNS double precision LANGUAGE sql VOLATILE AS $$
  SELECT least(p_max::float8,
               p_base * power(2::float8, least(greatest(p_retry - 1, 0), 40)) * (0.8 + random() * 0.4))
$$;

-- Stores a flow version. Idempotent: storing the same definition again changes nothing; a different
-- definition under a stored (slug, version) is refused (SQLSTATE 22023), because runs pinned to it
-- must never change.
CREATE FUNCTION flowreg.upsert_flow(p_slug text, p_version text, p_def jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_stored jsonb;
BEGIN
  INSERT INTO flowreg.flows (slug, version, definition) VALUES (p_slug, p_version, p_def)
  ON CONFLICT (slug, version) DO NOTHING;
  IF NOT FOUND THEN
    SELECT definition INTO v_stored FROM flowreg.flows WHERE slug = p_slug AND version = p_version;
    IF v_stored IS DISTINCT FROM p_def THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
        'flow %L version %L is already stored with a different definition', p_slug, p_version);
    END IF;
    RETURN false;
  END IF;
  INSERT INTO flowreg.flow_steps (flow_slug, version, step_slug, step_index, kind, handler, deps,
                                  is_leaf, max_attempts, base_delay_ms, max_delay_ms, timeout_ms)
  SELECT p_slug, p_version, s->>'slug', (i - 1)::int, s->>'kind', coalesce(s->>'handler', ''),
         ARRAY(SELECT jsonb_array_elements_text(s->'depends_on')),
         NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_def->'steps') o
                     WHERE o->'depends_on' ? (s->>'slug')),
         (s->'options'->>'max_attempts')::int, (s->'options'->>'base_delay_ms')::bigint,
         (s->'options'->>'max_delay_ms')::bigint, (s->'options'->>'timeout_ms')::bigint
  FROM jsonb_array_elements(p_def->'steps') WITH ORDINALITY AS x(s, i);
  INSERT INTO flowreg.flow_deps (flow_slug, version, dep_slug, step_slug)
  SELECT p_slug, p_version, d, s->>'slug'
  FROM jsonb_array_elements(p_def->'steps') s, jsonb_array_elements_text(s->'depends_on') d;
  RETURN true;
END $$;

-- Fails the given runs (still started) with the given errors (the first per run wins), cancels
-- their queued and started tasks and their unfinished steps. REQUIRES: the runs are locked.
CREATE FUNCTION flowreg._fail_runs(p_runs uuid[], p_errors text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_n bigint;
BEGIN
  WITH f AS (
    SELECT DISTINCT ON (run_id) run_id, error
    FROM unnest(p_runs, p_errors) WITH ORDINALITY AS x(run_id, error, i) ORDER BY run_id, i
  ),
  r AS (
    UPDATE flowreg.runs r SET status = 'failed', error = f.error, finished_at = now()
    FROM f WHERE r.id = ANY (p_runs) AND r.id = f.run_id AND r.status = 'started'
    RETURNING r.id
  ),
  t AS (
    UPDATE flowreg.tasks SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL
    WHERE run_id IN (SELECT id FROM r) AND status IN ('queued', 'started')
  ),
  s AS (
    UPDATE flowreg.step_states SET status = 'cancelled', finished_at = now()
    WHERE run_id IN (SELECT id FROM r) AND status IN ('created', 'started')
  )
  SELECT count(pg_notify('flowreg_runs', id::text || ' failed')) INTO v_n FROM r;
END $$;

-- Accounts for completed steps: their dependents have one dependency less, their runs one step
-- less. REQUIRES: the runs are locked.
CREATE FUNCTION flowreg._steps_completed(p_runs uuid[], p_steps text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_n bigint;
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
    UPDATE flowreg.runs r SET remaining_steps = r.remaining_steps - x.n
    FROM (SELECT run_id, count(*)::int AS n FROM d GROUP BY 1) x
    WHERE r.id = ANY (p_runs) AND r.id = x.run_id
  )
  SELECT count(*) INTO v_n FROM d;
END $$;

-- Starts every ready step (created, no remaining dependency) of the given runs: creates its tasks,
-- or completes an empty map step at once with [] (and starts what that makes ready, repeatedly),
-- or fails the run when a map step's input is not an array. Then completes the runs that have no
-- step left. Set-based: one pass handles every ready step of every run given.
-- REQUIRES: the runs are locked (or new in this transaction).
CREATE FUNCTION flowreg._start_steps(p_runs uuid[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_done_runs uuid[];
  v_done_steps text[];
  v_fail_runs uuid[];
  v_fail_errors text[];
  v_flows text[];
  v_n bigint;
BEGIN
  LOOP
    WITH ready AS MATERIALIZED (
      SELECT s.run_id, s.step_slug, fs.kind, r.flow_slug, r.flow_version, fs.max_attempts,
             fs.base_delay_ms, fs.max_delay_ms, fs.timeout_ms,
             CASE WHEN cardinality(fs.deps) = 0 THEN r.input
                  WHEN fs.kind = 'map' THEN
                    (SELECT d.output FROM flowreg.step_states d
                     WHERE d.run_id = s.run_id AND d.step_slug = fs.deps[1])
                  ELSE
                    (SELECT jsonb_object_agg(d.step_slug, d.output) FROM flowreg.step_states d
                     WHERE d.run_id = s.run_id AND d.step_slug = ANY (fs.deps))
             END AS input
      -- Driven by the run ids (primary key probes), whatever the statistics say.
      FROM unnest(p_runs) AS p(id)
      JOIN flowreg.runs r ON r.id = p.id
      JOIN flowreg.step_states s ON s.run_id = p.id
      JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
                                 AND fs.step_slug = s.step_slug
      WHERE s.status = 'created' AND s.remaining_deps = 0 AND r.status = 'started'
    ),
    sized AS MATERIALIZED (
      SELECT ready.*,
             CASE WHEN kind <> 'map' THEN 1
                  WHEN jsonb_typeof(input) = 'array' THEN jsonb_array_length(input)
                  ELSE -1 END AS n
      FROM ready
    ),
    new_tasks AS (
      INSERT INTO flowreg.tasks (run_id, step_slug, task_index, flow_slug, flow_version, input,
                                 max_attempts, base_delay_ms, max_delay_ms, timeout_ms)
      SELECT z.run_id, z.step_slug, (e.i - 1)::int, z.flow_slug, z.flow_version, e.elem,
             z.max_attempts, z.base_delay_ms, z.max_delay_ms, z.timeout_ms
      FROM sized z
      CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN z.kind = 'map' THEN z.input ELSE jsonb_build_array(z.input) END)
        WITH ORDINALITY AS e(elem, i)
      WHERE z.n > 0
    ),
    upd AS (
      UPDATE flowreg.step_states s
      SET status = CASE WHEN z.n > 0 THEN 'started' WHEN z.n = 0 THEN 'completed' ELSE 'failed' END,
          remaining_tasks = greatest(z.n, 0),
          task_count = greatest(z.n, 0),
          started_at = now(),
          finished_at = CASE WHEN z.n <= 0 THEN now() END,
          output = CASE WHEN z.n = 0 THEN '[]'::jsonb END,
          error = CASE WHEN z.n < 0 THEN
            format('step %L is a map step but its input is %s, not an array', z.step_slug,
                   CASE jsonb_typeof(z.input) WHEN 'object' THEN 'an object' WHEN 'null' THEN 'null'
                        WHEN 'array' THEN 'an array' ELSE 'a ' || jsonb_typeof(z.input) END) END
      FROM sized z
      WHERE s.run_id = z.run_id AND s.step_slug = z.step_slug
      RETURNING s.run_id, s.step_slug, s.status, s.error
    )
    SELECT array_agg(u.run_id) FILTER (WHERE u.status = 'completed'),
           array_agg(u.step_slug) FILTER (WHERE u.status = 'completed'),
           array_agg(u.run_id) FILTER (WHERE u.status = 'failed'),
           array_agg(u.error) FILTER (WHERE u.status = 'failed'),
           (SELECT array_agg(DISTINCT z.flow_slug) FROM sized z WHERE z.n > 0)
    INTO v_done_runs, v_done_steps, v_fail_runs, v_fail_errors, v_flows
    FROM upd u;

    IF v_flows IS NOT NULL THEN
      PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
    END IF;
    IF v_fail_runs IS NOT NULL THEN
      PERFORM flowreg._fail_runs(v_fail_runs, v_fail_errors);
    END IF;
    EXIT WHEN v_done_runs IS NULL;
    PERFORM flowreg._steps_completed(v_done_runs, v_done_steps);
  END LOOP;

  -- Runs without remaining steps are complete: their output is their leaf steps' outputs.
  WITH done AS (
    UPDATE flowreg.runs r
    SET status = 'completed', finished_at = now(),
        output = coalesce(
          (SELECT jsonb_object_agg(s.step_slug, s.output)
           FROM flowreg.step_states s
           JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
                                      AND fs.step_slug = s.step_slug
           WHERE s.run_id = r.id AND fs.is_leaf), '{}'::jsonb)
    FROM unnest(p_runs) AS p(id)
    WHERE r.id = p.id AND r.status = 'started' AND r.remaining_steps = 0
    RETURNING r.id
  )
  SELECT count(pg_notify('flowreg_runs', id::text || ' completed')) INTO v_n FROM done;
END $$;

-- Creates runs of a stored flow version, one per input, and starts their root steps.
-- A key already used for that flow slug returns the run that used it (created = false).
-- Errors: SQLSTATE P0002 when the flow version is not stored, 22023 when p_retry_of is unknown.
CREATE FUNCTION flowreg.start_runs(p_slug text, p_version text, p_inputs jsonb[],
                                   p_keys text[] DEFAULT NULL, p_retry_of uuid DEFAULT NULL)
RETURNS TABLE (run_id uuid, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_steps int;
  v_new uuid[];
BEGIN
  SELECT count(*) INTO v_steps FROM flowreg.flow_steps
  WHERE flow_slug = p_slug AND version = p_version;
  IF v_steps = 0 THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002',
      MESSAGE = format('flow %L version %L is not stored', p_slug, p_version);
  END IF;
  IF p_retry_of IS NOT NULL AND NOT EXISTS (SELECT 1 FROM flowreg.runs WHERE id = p_retry_of) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = format('run %s (retried) does not exist', p_retry_of);
  END IF;

  WITH ins AS (
    INSERT INTO flowreg.runs (flow_slug, flow_version, input, remaining_steps, idempotency_key,
                              retry_of)
    SELECT p_slug, p_version, x.input, v_steps, x.key, p_retry_of
    FROM unnest(p_inputs, coalesce(p_keys, array_fill(NULL::text, ARRAY[cardinality(p_inputs)])))
      AS x(input, key)
    ON CONFLICT (flow_slug, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
  ),
  st AS (
    INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps)
    SELECT ins.id, fs.step_slug, fs.step_index, fs.kind, cardinality(fs.deps)
    FROM ins CROSS JOIN flowreg.flow_steps fs
    WHERE fs.flow_slug = p_slug AND fs.version = p_version
  )
  SELECT array_agg(id) INTO v_new FROM ins;

  IF v_new IS NOT NULL THEN
    PERFORM pg_notify('flowreg_runs', id::text || ' started') FROM unnest(v_new) AS id;
    PERFORM flowreg._start_steps(v_new);
  END IF;

  RETURN QUERY SELECT id, true FROM unnest(v_new) AS id;
  IF p_keys IS NOT NULL THEN
    RETURN QUERY
      SELECT r.id, false FROM flowreg.runs r
      WHERE r.flow_slug = p_slug AND r.idempotency_key = ANY (p_keys)
        AND r.id <> ALL (coalesce(v_new, '{}'));
  END IF;
END $$;

-- Fails or requeues started tasks whose attempt matches; returns the ids accepted.
-- p_batch: [{"id", "attempt", "error", "permanent"}]. REQUIRES: the tasks' runs are locked.
CREATE FUNCTION flowreg._fail_locked(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_acc bigint[];
  v_fail_runs uuid[];
  v_fail_steps text[];
  v_fail_errors text[];
  v_flows text[];
BEGIN
  WITH b AS (
    SELECT * FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int, error text,
                                                   permanent boolean)
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET status = CASE WHEN coalesce(b.permanent, false) OR t.attempt >= t.max_attempts
                      THEN 'failed' ELSE 'queued' END,
        available_at = CASE WHEN coalesce(b.permanent, false) OR t.attempt >= t.max_attempts
                            THEN t.available_at
                            ELSE now() + flowreg.retry_delay_ms(t.base_delay_ms, t.max_delay_ms,
                                                                t.attempt) * interval '1 ms' END,
        finished_at = CASE WHEN coalesce(b.permanent, false) OR t.attempt >= t.max_attempts
                           THEN now() END,
        error = coalesce(b.error, ''), error_at = now(), lease_expires_at = NULL
    FROM b
    WHERE t.id = ANY (ARRAY(SELECT (e->>'id')::bigint FROM jsonb_array_elements(p_batch) e))
      AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
    RETURNING t.id, t.run_id, t.step_slug, t.task_index, t.status, t.error, t.attempt,
              t.flow_slug, t.available_at, coalesce(b.permanent, false) AS permanent
  )
  SELECT array_agg(u.id),
         array_agg(u.run_id) FILTER (WHERE u.status = 'failed'),
         array_agg(u.step_slug) FILTER (WHERE u.status = 'failed'),
         array_agg(format('step %L%s failed %s: %s', u.step_slug,
                          CASE WHEN u.task_index > 0 OR s.kind = 'map'
                               THEN ' task ' || u.task_index ELSE '' END,
                          CASE WHEN u.permanent THEN 'permanently on attempt ' || u.attempt
                               ELSE 'after ' || u.attempt || ' attempt'
                                    || CASE WHEN u.attempt = 1 THEN '' ELSE 's' END END,
                          u.error)) FILTER (WHERE u.status = 'failed'),
         array_agg(DISTINCT u.flow_slug) FILTER (WHERE u.status = 'queued'
                                                  AND u.available_at <= now())
  INTO v_acc, v_fail_runs, v_fail_steps, v_fail_errors, v_flows
  FROM upd u JOIN flowreg.step_states s ON s.run_id = u.run_id AND s.step_slug = u.step_slug;

  IF v_fail_runs IS NOT NULL THEN
    UPDATE flowreg.step_states s SET status = 'failed', error = x.error, finished_at = now()
    FROM (SELECT DISTINCT ON (run_id, step_slug) run_id, step_slug, error
          FROM unnest(v_fail_runs, v_fail_steps, v_fail_errors) AS y(run_id, step_slug, error)) x
    WHERE s.run_id = x.run_id AND s.step_slug = x.step_slug AND s.status = 'started';
    PERFORM flowreg._fail_runs(v_fail_runs, v_fail_errors);
  END IF;
  IF v_flows IS NOT NULL THEN
    PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
  END IF;
  RETURN coalesce(v_acc, '{}');
END $$;

-- Locks (by id, waiting) the runs of the given tasks: the first step of complete and fail.
CREATE FUNCTION flowreg._lock_runs_of(p_ids bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  -- PERFORM runs the query to the end (a SQL function would stop at the first row).
  -- The arrays (rather than joins) keep the plans on the primary keys whatever the statistics.
  PERFORM 1 FROM flowreg.runs r
  WHERE r.id = ANY (ARRAY(SELECT t.run_id FROM flowreg.tasks t WHERE t.id = ANY (p_ids)))
  ORDER BY r.id FOR UPDATE OF r;
END $$;

-- Records task failures. p_batch: [{"id", "attempt", "error", "permanent"}].
-- Returns the ids rejected (attempt no longer current, or the task is not started).
CREATE FUNCTION flowreg.fail_tasks(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_acc bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  PERFORM flowreg._lock_runs_of(v_ids);
  v_acc := flowreg._fail_locked(p_batch);
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (v_acc) ORDER BY 1);
END $$;

-- Records task completions. p_batch: [{"id", "attempt", "output"}].
-- Returns the ids rejected (attempt no longer current, or the task is not started).
CREATE FUNCTION flowreg.complete_tasks(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_attempts int[];
  v_outputs jsonb[];
  v_acc bigint[];
  v_truns uuid[];
  v_tsteps text[];
  v_druns uuid[];
  v_dsteps text[];
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
    RETURNING t.id, t.run_id, t.step_slug
  )
  SELECT array_agg(id), array_agg(run_id), array_agg(step_slug) INTO v_acc, v_truns, v_tsteps
  FROM done;
  IF v_acc IS NULL THEN
    RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i ORDER BY 1);
  END IF;

  -- A step whose last task completed is complete, with its output (a map step's in task order).
  WITH per AS (
    SELECT run_id, step_slug, count(*)::int AS n
    FROM unnest(v_truns, v_tsteps) AS x(run_id, step_slug) GROUP BY 1, 2
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
                      ELSE
                        (SELECT t.output FROM flowreg.tasks t
                         WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug
                           AND t.task_index = 0) END
    FROM per
    WHERE s.run_id = ANY (v_truns) AND s.run_id = per.run_id AND s.step_slug = per.step_slug
      AND s.status = 'started'
    RETURNING s.run_id, s.step_slug, s.status
  )
  SELECT array_agg(run_id), array_agg(step_slug) INTO v_druns, v_dsteps
  FROM upd WHERE status = 'completed';

  IF v_druns IS NOT NULL THEN
    PERFORM flowreg._steps_completed(v_druns, v_dsteps);
    PERFORM flowreg._start_steps(ARRAY(SELECT DISTINCT r FROM unnest(v_druns) r));
  END IF;
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (v_acc) ORDER BY 1);
END $$;

-- Claims up to p_limit ready tasks of the given flows for p_worker, each leased for its step's
-- timeout. p_flows: [{"slug", "version"}]. Expired leases of those flows are handled first: a task
-- with attempts left is requeued at once (and claimable by this very call); one without fails its
-- step and run.
CREATE FUNCTION flowreg.claim_tasks(p_worker text, p_flows jsonb, p_limit int)
RETURNS TABLE (id bigint, run_id uuid, flow_slug text, flow_version text, step_slug text,
               task_index int, attempt int, input jsonb, max_attempts int,
               lease_expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_slugs text[];
  v_versions text[];
  v_exhausted jsonb;
BEGIN
  SELECT array_agg(f.slug), array_agg(f.version) INTO v_slugs, v_versions
  FROM jsonb_to_recordset(p_flows) AS f(slug text, version text);

  IF EXISTS (SELECT 1 FROM flowreg.tasks t
             WHERE t.status = 'started' AND t.lease_expires_at < now()) THEN
    -- Exhausted: lock the runs first (skipping busy ones), as every writer does.
    WITH ex AS (
      SELECT t.id, t.attempt, t.run_id, t.timeout_ms FROM flowreg.tasks t
      WHERE t.status = 'started' AND t.lease_expires_at < now() AND t.attempt >= t.max_attempts
        AND (t.flow_slug, t.flow_version) IN (SELECT * FROM unnest(v_slugs, v_versions))
      LIMIT p_limit
    ),
    lk AS (
      SELECT r.id FROM flowreg.runs r WHERE r.id IN (SELECT ex.run_id FROM ex)
      ORDER BY r.id FOR UPDATE OF r SKIP LOCKED
    )
    SELECT jsonb_agg(jsonb_build_object(
             'id', ex.id, 'attempt', ex.attempt, 'permanent', true,
             'error', format('lease expired: no result within the step timeout of %s ms',
                             ex.timeout_ms)))
    INTO v_exhausted
    FROM ex WHERE ex.run_id IN (SELECT lk.id FROM lk);
    IF v_exhausted IS NOT NULL THEN
      PERFORM flowreg._fail_locked(v_exhausted);
    END IF;

    -- Attempts left: back to the queue, claimable at once.
    UPDATE flowreg.tasks t
    SET status = 'queued', available_at = now(), lease_expires_at = NULL,
        error = format('lease expired: no result within the step timeout of %s ms', t.timeout_ms),
        error_at = now()
    WHERE t.id IN (
      SELECT e.id FROM flowreg.tasks e
      WHERE e.status = 'started' AND e.lease_expires_at < now() AND e.attempt < e.max_attempts
        AND (e.flow_slug, e.flow_version) IN (SELECT * FROM unnest(v_slugs, v_versions))
      LIMIT p_limit FOR UPDATE SKIP LOCKED);
  END IF;

  RETURN QUERY
  WITH cand AS (
    SELECT c.id, c.available_at
    FROM unnest(v_slugs, v_versions) AS f(slug, version)
    CROSS JOIN LATERAL (
      SELECT q.id, q.available_at FROM flowreg.tasks q
      WHERE q.status = 'queued' AND q.flow_slug = f.slug AND q.flow_version = f.version
        AND q.available_at <= now()
      ORDER BY q.available_at
      LIMIT p_limit
      FOR UPDATE SKIP LOCKED) c
    ORDER BY c.available_at
    LIMIT p_limit
  )
  UPDATE flowreg.tasks t
  SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker, started_at = now(),
      lease_expires_at = now() + t.timeout_ms * interval '1 ms'
  FROM cand
  WHERE t.id = cand.id
  RETURNING t.id, t.run_id, t.flow_slug, t.flow_version, t.step_slug, t.task_index, t.attempt,
            t.input, t.max_attempts, t.lease_expires_at;
END $$;

-- Extends the leases of started tasks whose attempt matches, by each step's timeout from now.
-- p_batch: [{"id", "attempt"}]. Returns the ids rejected.
CREATE FUNCTION flowreg.renew_leases(p_worker text, p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_acc bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  WITH upd AS (
    UPDATE flowreg.tasks t SET lease_expires_at = now() + t.timeout_ms * interval '1 ms'
    FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int)
    WHERE t.id = ANY (v_ids) AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
      AND t.worker_id = p_worker
    RETURNING t.id
  )
  SELECT array_agg(id) INTO v_acc FROM upd;
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (coalesce(v_acc, '{}'))
               ORDER BY 1);
END $$;

-- Cancels a started run: its queued and started tasks and unfinished steps are cancelled (later
-- completions of its tasks are rejected). Returns false when the run had already ended,
-- SQLSTATE P0002 when there is no such run.
CREATE FUNCTION flowreg.cancel_run(p_run uuid)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_status text;
BEGIN
  SELECT status INTO v_status FROM flowreg.runs WHERE id = p_run FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('run %s does not exist', p_run);
  END IF;
  IF v_status <> 'started' THEN
    RETURN false;
  END IF;
  UPDATE flowreg.tasks SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL
  WHERE run_id = p_run AND status IN ('queued', 'started');
  UPDATE flowreg.step_states SET status = 'cancelled', finished_at = now()
  WHERE run_id = p_run AND status IN ('created', 'started');
  UPDATE flowreg.runs SET status = 'cancelled', finished_at = now(), error = 'cancelled'
  WHERE id = p_run;
  PERFORM pg_notify('flowreg_runs', p_run::text || ' cancelled');
  RETURN true;
END $$;

-- Starts a new run of an ended run's flow version with its input, linked by retry_of.
CREATE FUNCTION flowreg.retry_run(p_run uuid)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
  v_run flowreg.runs;
  v_new uuid;
BEGIN
  SELECT * INTO v_run FROM flowreg.runs WHERE id = p_run;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('run %s does not exist', p_run);
  END IF;
  IF v_run.status = 'started' THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = format('run %s is still running: cancel it before retrying it', p_run);
  END IF;
  SELECT s.run_id INTO v_new
  FROM flowreg.start_runs(v_run.flow_slug, v_run.flow_version, ARRAY[v_run.input], NULL, p_run) s;
  RETURN v_new;
END $$;

-- Deletes ended runs (with their steps and tasks) that finished before now() - p_older_than.
CREATE FUNCTION flowreg.prune(p_older_than interval)
RETURNS bigint LANGUAGE sql AS $$
  WITH d AS (
    DELETE FROM flowreg.runs
    WHERE finished_at < now() - p_older_than AND status <> 'started'
    RETURNING 1
  )
  SELECT count(*) FROM d
$$;
