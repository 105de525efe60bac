-- flowreg migration 0003: workers (core/src/worker).
--
-- * Short leases. A worker leases a task for min(its step's timeout, the worker's lease TTL) and
--   renews the lease while the handler runs; the worker itself enforces the step timeout. So the
--   tasks of a worker that died (SIGKILL, lost machine) come back after one lease TTL, not after
--   the step's whole timeout.
-- * One round trip per worker cycle: flowreg.work() records a batch of completions and failures
--   and claims the next batch in ONE transaction (one commit, one WAL flush), and tells the worker
--   when the next delayed task of its flows is due, so it sleeps exactly until then. A cycle that
--   only claims commits without waiting for the flush (see work()).
-- * Release on graceful shutdown: tasks a worker claimed but never started go back to the queue
--   with their attempt refunded; tasks whose handler was still running are treated like an expired
--   lease at once (requeued when attempts remain, else failed). Either way other workers are
--   notified and can claim them at once.
-- * Heartbeats: flowreg.workers holds each worker's last heartbeat and what it serves.

CREATE TABLE flowreg.workers (
  id text PRIMARY KEY,
  host text NOT NULL,
  pid int NOT NULL,
  flows jsonb NOT NULL DEFAULT '[]',  -- [{"slug", "version"}] it claims for
  concurrency int NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
  stopped_at timestamptz
);

CREATE FUNCTION flowreg.worker_heartbeat(p_worker text, p_host text, p_pid int, p_flows jsonb,
                                         p_concurrency int, p_stopped boolean)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO flowreg.workers AS w (id, host, pid, flows, concurrency, stopped_at)
  VALUES (p_worker, p_host, p_pid, p_flows, p_concurrency, CASE WHEN p_stopped THEN now() END)
  ON CONFLICT (id) DO UPDATE
  SET last_heartbeat_at = now(), flows = excluded.flows, concurrency = excluded.concurrency,
      stopped_at = excluded.stopped_at;
$$;

-- Claims up to p_limit ready tasks of the given flows for p_worker, each leased for
-- least(its step's timeout, p_lease_ms) (p_lease_ms NULL: the timeout). p_flows: [{"slug",
-- "version"}]. Expired leases of those flows are handled first: a task with attempts left is
-- requeued at once (and claimable by this very call); one without fails its step and run.
CREATE FUNCTION flowreg._claim(p_worker text, p_flows jsonb, p_limit int, p_lease_ms bigint)
RETURNS TABLE (id bigint, run_id uuid, flow_slug text, flow_version text, step_slug text,
               task_index int, attempt int, input jsonb, max_attempts int, timeout_ms bigint,
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
  IF v_slugs IS NULL OR p_limit <= 0 THEN
    RETURN;
  END IF;

  IF EXISTS (SELECT 1 FROM flowreg.tasks t
             WHERE t.status = 'started' AND t.lease_expires_at < now()) THEN
    -- Exhausted: lock the runs first (skipping busy ones), as every writer does.
    WITH ex AS (
      SELECT t.id, t.attempt, t.run_id,
             CASE WHEN t.error_at >= t.started_at THEN t.error END AS error
      FROM flowreg.tasks t
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
             'error', coalesce(ex.error,
                               'lease expired: its worker stopped renewing it (the worker died, '
                               'lost the database, or the step timed out)')))
    INTO v_exhausted
    FROM ex WHERE ex.run_id IN (SELECT lk.id FROM lk);
    IF v_exhausted IS NOT NULL THEN
      PERFORM flowreg._fail_locked(v_exhausted);
    END IF;

    -- Attempts left: back to the queue, claimable at once.
    UPDATE flowreg.tasks t
    SET status = 'queued', available_at = now(), lease_expires_at = NULL,
        error = 'lease expired: its worker stopped renewing it (the worker died, lost the '
                'database, or the step timed out)',
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
      lease_expires_at = now() + least(t.timeout_ms, coalesce(p_lease_ms, t.timeout_ms))
                                 * interval '1 ms'
  FROM cand
  WHERE t.id = cand.id
  RETURNING t.id, t.run_id, t.flow_slug, t.flow_version, t.step_slug, t.task_index, t.attempt,
            t.input, t.max_attempts, t.timeout_ms, t.lease_expires_at;
END $$;

-- 0002's claim, now with the new lease rules and without lease TTL (a lease is the step's
-- timeout, as before).
CREATE OR REPLACE FUNCTION flowreg.claim_tasks(p_worker text, p_flows jsonb, p_limit int)
RETURNS TABLE (id bigint, run_id uuid, flow_slug text, flow_version text, step_slug text,
               task_index int, attempt int, input jsonb, max_attempts int,
               lease_expires_at timestamptz)
LANGUAGE sql AS $$
  SELECT c.id, c.run_id, c.flow_slug, c.flow_version, c.step_slug, c.task_index, c.attempt,
         c.input, c.max_attempts, c.lease_expires_at
  FROM flowreg._claim(p_worker, p_flows, p_limit, NULL) c;
$$;

-- Extends the leases of started tasks whose attempt matches, by least(each step's timeout,
-- p_lease_ms) from now (p_lease_ms NULL: the timeout). p_batch: [{"id", "attempt"}]. Returns the
-- ids rejected.
CREATE FUNCTION flowreg.renew_leases(p_worker text, p_batch jsonb, p_lease_ms bigint)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_acc bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  WITH upd AS (
    UPDATE flowreg.tasks t
    SET lease_expires_at = now() + least(t.timeout_ms, coalesce(p_lease_ms, t.timeout_ms))
                                   * interval '1 ms'
    FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int)
    WHERE t.id = ANY (v_ids) AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
      AND t.worker_id = p_worker
    RETURNING t.id
  )
  SELECT array_agg(id) INTO v_acc FROM upd;
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (coalesce(v_acc, '{}'))
               ORDER BY 1);
END $$;

CREATE OR REPLACE FUNCTION flowreg.renew_leases(p_worker text, p_batch jsonb)
RETURNS bigint[] LANGUAGE sql AS $$
  SELECT flowreg.renew_leases(p_worker, p_batch, NULL);
$$;

-- One worker cycle in one transaction: records completions ([{"id", "attempt", "output"}]) and
-- failures ([{"id", "attempt", "error", "permanent"}]), then claims up to p_limit tasks as
-- _claim does (tasks the completions just made ready included). Rows:
--   kind 'rejected'  id: a completion or failure not recorded (attempt no longer current, or the
--                    task no longer started)
--   kind 'claimed'   a claimed task, every column set
--   kind 'due'       at most one: when the next delayed (retrying) task of these flows becomes
--                    available: timeout_ms holds the milliseconds until then (so the worker's
--                    clock does not matter), lease_expires_at the time
CREATE FUNCTION flowreg.work(p_worker text, p_completions jsonb, p_failures jsonb, p_flows jsonb,
                             p_limit int, p_lease_ms bigint)
RETURNS TABLE (kind text, id bigint, run_id uuid, flow_slug text, flow_version text,
               step_slug text, task_index int, attempt int, input jsonb, max_attempts int,
               timeout_ms bigint, lease_expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_rejected bigint[] := '{}';
BEGIN
  IF coalesce(jsonb_array_length(p_completions), 0) = 0
     AND coalesce(jsonb_array_length(p_failures), 0) = 0 THEN
    -- Nothing to record: a claim alone does not wait for its WAL flush (the first commit of a
    -- run's work is then its completion's). Should the server crash before the flush, the claim
    -- is lost and the task is queued again; its worker's completion is then rejected (or accepted
    -- in place of a later claimer's, fenced by attempt): a result is never lost or recorded twice.
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  IF p_completions IS NOT NULL AND jsonb_array_length(p_completions) > 0 THEN
    v_rejected := v_rejected || flowreg.complete_tasks(p_completions);
  END IF;
  IF p_failures IS NOT NULL AND jsonb_array_length(p_failures) > 0 THEN
    v_rejected := v_rejected || flowreg.fail_tasks(p_failures);
  END IF;

  RETURN QUERY SELECT 'rejected'::text, r, NULL::uuid, NULL::text, NULL::text, NULL::text,
                      NULL::int, NULL::int, NULL::jsonb, NULL::int, NULL::bigint,
                      NULL::timestamptz
               FROM unnest(v_rejected) AS r;
  RETURN QUERY SELECT 'claimed'::text, c.* FROM flowreg._claim(p_worker, p_flows, p_limit,
                                                                  p_lease_ms) c;
  RETURN QUERY
    SELECT 'due'::text, NULL::bigint, NULL::uuid, NULL::text, NULL::text, NULL::text, NULL::int,
           NULL::int, NULL::jsonb, NULL::int,
           ceil(extract(epoch FROM min(d.at) - now()) * 1000)::bigint, min(d.at)
    FROM jsonb_to_recordset(p_flows) AS f(slug text, version text)
    CROSS JOIN LATERAL (
      SELECT q.available_at AS at FROM flowreg.tasks q
      WHERE q.status = 'queued' AND q.flow_slug = f.slug AND q.flow_version = f.version
        AND q.available_at > now()
      ORDER BY q.available_at LIMIT 1) d
    HAVING min(d.at) IS NOT NULL;
END $$;

-- Graceful shutdown: gives back tasks p_worker holds. p_batch: [{"id", "attempt", "ran"}]; ran =
-- false: the handler never started (the attempt is refunded, the task requeued at once); ran =
-- true: the handler was interrupted (requeued at once when attempts remain, else the lease is
-- expired now and the next claim fails the step). Returns the ids released.
CREATE FUNCTION flowreg.release_tasks(p_worker text, p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_acc bigint[];
  v_flows text[];
BEGIN
  WITH b AS (
    SELECT * FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int, ran boolean)
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET status = CASE WHEN b.ran AND t.attempt >= t.max_attempts THEN 'started' ELSE 'queued' END,
        attempt = CASE WHEN b.ran THEN t.attempt ELSE t.attempt - 1 END,
        available_at = CASE WHEN b.ran AND t.attempt >= t.max_attempts THEN t.available_at
                            ELSE now() END,
        lease_expires_at = CASE WHEN b.ran AND t.attempt >= t.max_attempts
                                THEN now() - interval '1 ms' END,
        error = CASE WHEN b.ran THEN format('interrupted: worker %s shut down while the handler '
                                            'ran', p_worker) ELSE t.error END,
        error_at = CASE WHEN b.ran THEN now() ELSE t.error_at END
    FROM b
    WHERE t.id = ANY (ARRAY(SELECT (e->>'id')::bigint FROM jsonb_array_elements(p_batch) e))
      AND t.id = b.id AND t.attempt = b.attempt AND t.status = 'started'
      AND t.worker_id = p_worker
    RETURNING t.id, t.flow_slug
  )
  SELECT array_agg(u.id), array_agg(DISTINCT u.flow_slug) INTO v_acc, v_flows FROM upd u;
  IF v_flows IS NOT NULL THEN
    PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
  END IF;
  RETURN coalesce(v_acc, '{}');
END $$;

-- A flow version is its shape (steps, kinds, dependencies, handlers); tuning options and the input
-- schema are not part of it. Storing a version again with other options (a plugin rebuilt with
-- more retries, a longer timeout) now updates them for the tasks created from then on (tasks copy
-- their options when created, so work already queued keeps its own). A different shape under a
-- stored version is still refused.
CREATE FUNCTION flowreg._flow_shape(p_def jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(jsonb_agg(s - 'options' ORDER BY i), '[]')
  FROM jsonb_array_elements(p_def->'steps') WITH ORDINALITY AS x(s, i);
$$;

CREATE OR REPLACE FUNCTION flowreg.upsert_flow(p_slug text, p_version text, p_def jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_stored jsonb;
BEGIN
  INSERT INTO flowreg.flows (slug, version, definition) VALUES (p_slug, p_version, p_def)
  ON CONFLICT (slug, version) DO NOTHING;
  IF NOT FOUND THEN
    SELECT definition INTO v_stored FROM flowreg.flows
    WHERE slug = p_slug AND version = p_version FOR UPDATE;
    IF v_stored = p_def THEN
      RETURN false;
    END IF;
    IF flowreg._flow_shape(v_stored) IS DISTINCT FROM flowreg._flow_shape(p_def) THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
        'flow %L version %L is already stored with a different definition', p_slug, p_version);
    END IF;
    UPDATE flowreg.flows SET definition = p_def WHERE slug = p_slug AND version = p_version;
    UPDATE flowreg.flow_steps fs
    SET max_attempts = (s->'options'->>'max_attempts')::int,
        base_delay_ms = (s->'options'->>'base_delay_ms')::bigint,
        max_delay_ms = (s->'options'->>'max_delay_ms')::bigint,
        timeout_ms = (s->'options'->>'timeout_ms')::bigint
    FROM jsonb_array_elements(p_def->'steps') AS s
    WHERE fs.flow_slug = p_slug AND fs.version = p_version AND fs.step_slug = s->>'slug';
    RETURN true;
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

-- 0002's _start_steps, with its ready steps found from the given runs first (a materialized
-- primary-key lookup). Joined as before, the planner could start from flow_steps and walk every run
-- of the flow through runs_by_flow: measured 2.9 ms per flow step with 10,000 runs of history,
-- the largest cost of a worker's cycle, and growing with the history.
CREATE OR REPLACE FUNCTION flowreg._start_steps(p_runs uuid[])
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
    WITH rr AS MATERIALIZED (
      SELECT r.id, r.flow_slug, r.flow_version, r.input FROM flowreg.runs r
      WHERE r.id = ANY (p_runs) AND r.status = 'started'
    ),
    ready AS MATERIALIZED (
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
      -- Driven by the run ids (primary key probes, materialized first), whatever the statistics
      -- say.
      FROM rr AS r
      JOIN flowreg.step_states s ON s.run_id = r.id
      JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
                                 AND fs.step_slug = s.step_slug
      WHERE s.status = 'created' AND s.remaining_deps = 0
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
