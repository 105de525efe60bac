-- Claims up to p_limit ready tasks of the given flows for p_worker, each leased for
-- least(its step's timeout, p_lease_ms) (p_lease_ms NULL: the timeout). p_flows: [{"slug",
-- "version"}]. Expired leases of those flows are handled first: a task with attempts left is
-- requeued at once (and claimable by this very call); one without fails its step and run.
-- A task's attempts are its step's (flow_steps, by primary key: migration 0014; a task whose step
-- is gone has no attempt left); its timeout is the copy it took when it was created.
-- The tasks this transaction created already claimed (transaction setting flowreg.claimed, a
-- comma-separated list of ids that _claimed_here wrote for _account_steps and _start_steps within
-- a work() call) are returned too, and counted first in p_limit, after p_taken: the tasks the
-- caller claimed and returns itself (a chain's next steps, see _complete_locked and work).
--
-- Generic plans: PL/pgSQL would otherwise plan the claim query again on every call while it
-- estimates the generic plan dearer. A generic plan is made once, from the statistics of that
-- moment, and kept: made on empty tables it would scan sequentially forever, so sequential scans
-- are off here: every statement is driven by primary keys, flow keys or the queue indexes
-- (tests/pg/run_store_test.cpp checks the plans made on empty tables).
CREATE OR REPLACE FUNCTION flowreg._claim(p_worker text, p_flows jsonb, p_limit int,
                                          p_lease_ms bigint, p_taken int DEFAULT 0)
RETURNS TABLE (id bigint, run_id uuid, flow_slug text, flow_version text, step_slug text,
               task_index int, attempt int, input jsonb, max_attempts int, timeout_ms bigint,
               lease_expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_slugs text[];
  v_versions text[];
  v_exhausted jsonb;
  -- Tasks this transaction created already claimed (see work and _claimed_here).
  v_direct bigint[] := string_to_array(nullif(current_setting('flowreg.claimed', true), ''),
                                       ',')::bigint[];
  v_set text;  -- set_config's value, unused (an assignment needs no query: see work)
  v_gated flowreg.tasks[];  -- the tasks with a gate claimed, as _claim_gated claimed them
  v_room int;  -- what is left of p_limit for the walks of tasks_queued
BEGIN
  IF v_direct IS NOT NULL THEN
    v_set := set_config('flowreg.claimed', '', true);
  END IF;
  SELECT array_agg(f.slug), array_agg(f.version) INTO v_slugs, v_versions
  FROM jsonb_to_recordset(p_flows) AS f(slug text, version text);
  IF v_slugs IS NULL OR p_limit <= 0 THEN
    RETURN;
  END IF;

  IF EXISTS (SELECT 1 FROM flowreg.tasks t
             WHERE t.status = 'started' AND t.lease_expires_at < now()) THEN
    -- Exhausted: lock the tasks, then their runs, skipping busy ones (so never waiting: a solo
    -- task is locked before its run, as every writer does, and another task's run, locked
    -- after it here, is skipped when busy). Here and below, rows are found by their ids as
    -- conditions of their primary key (`id = ANY (ARRAY(...))`), not by `id IN (...)`, a join
    -- that a plan may run as a walk of the whole primary key.
    WITH ex AS (
      SELECT t.id, t.attempt, t.run_id,
             CASE WHEN t.error_at >= t.started_at THEN t.error END AS error
      FROM flowreg.tasks t
      WHERE t.status = 'started' AND t.lease_expires_at < now()
        AND t.attempt >= coalesce((SELECT fs.max_attempts FROM flowreg.flow_steps fs
                                   WHERE fs.flow_slug = t.flow_slug AND fs.version = t.flow_version
                                     AND fs.step_slug = t.step_slug), 0)
        AND (t.flow_slug, t.flow_version) IN (SELECT * FROM unnest(v_slugs, v_versions))
      LIMIT p_limit FOR UPDATE OF t SKIP LOCKED
    ),
    lk AS (
      SELECT r.id FROM flowreg.runs r WHERE r.id = ANY (ARRAY(SELECT ex.run_id FROM ex))
      ORDER BY r.id FOR UPDATE OF r SKIP LOCKED
    )
    SELECT jsonb_agg(jsonb_build_object(
             'id', ex.id, 'attempt', ex.attempt, 'permanent', true, 'outcome', 'lease_expired',
             'error', coalesce(ex.error,
                               'lease expired: its worker stopped renewing it (the worker died, '
                               'lost the database, or the step timed out)')))
    INTO v_exhausted
    FROM ex WHERE ex.run_id IN (SELECT lk.id FROM lk);
    IF v_exhausted IS NOT NULL THEN
      PERFORM flowreg._fail_locked(v_exhausted);
    END IF;

    -- Attempts left: back to the queue, claimable at once; the attempt kept in task_attempts
    -- (migration 0019), ended when its lease did.
    WITH lapsed AS MATERIALIZED (
      SELECT e.id, e.lease_expires_at FROM flowreg.tasks e
      WHERE e.status = 'started' AND e.lease_expires_at < now()
        AND e.attempt < coalesce((SELECT fs.max_attempts FROM flowreg.flow_steps fs
                                  WHERE fs.flow_slug = e.flow_slug AND fs.version = e.flow_version
                                    AND fs.step_slug = e.step_slug), 0)
        AND (e.flow_slug, e.flow_version) IN (SELECT * FROM unnest(v_slugs, v_versions))
      LIMIT p_limit FOR UPDATE SKIP LOCKED
    ),
    requeued AS (
      UPDATE flowreg.tasks t
      SET status = 'queued', available_at = now(), lease_expires_at = NULL,
          error = 'lease expired: its worker stopped renewing it (the worker died, lost the '
                  'database, or the step timed out)',
          error_at = now()
      FROM lapsed l
      WHERE t.id = ANY (ARRAY[l.id])
      RETURNING t.run_id, t.step_slug, t.task_index, t.attempt, t.worker_id, t.started_at,
                l.lease_expires_at, t.error
    )
    INSERT INTO flowreg.task_attempts (run_id, step_slug, task_index, attempt, worker_id,
                                       started_at, finished_at, outcome, error)
    SELECT q.run_id, q.step_slug, q.task_index, q.attempt, q.worker_id, q.started_at,
           least(q.lease_expires_at, now()), 'lease_expired', q.error
    FROM requeued q
    ON CONFLICT DO NOTHING;
  END IF;

  -- Tasks with a gate (concurrency limits per key, migration 0023) first, by _claim_gated, when a
  -- flow served has one (a probe of flow_steps per flow): they are returned as it claimed them
  -- (not read again). The walks below take the tasks without a gate (tasks_queued).
  -- (The probe reads flow_steps_gated: no row for a flow without a gate.)
  IF EXISTS (SELECT FROM unnest(v_slugs, v_versions) AS f(slug, version)
             CROSS JOIN LATERAL (SELECT FROM flowreg.flow_steps s
                                 WHERE s.flow_slug = f.slug AND s.version = f.version
                                   AND s.gate_prefix IS NOT NULL LIMIT 1) s)
     AND p_limit - p_taken - coalesce(cardinality(v_direct), 0) > 0 THEN
    v_gated := flowreg._claim_gated(p_worker, v_slugs, v_versions,
                                    p_limit - p_taken - coalesce(cardinality(v_direct), 0),
                                    p_lease_ms);
  END IF;
  v_room := p_limit - p_taken - coalesce(cardinality(v_direct), 0)
            - coalesce(cardinality(v_gated), 0);

  -- Two forms of one statement, which differ in cand only (the tasks it takes, locked): for flows
  -- whose tasks all have priority 0 (the common case), the walk of tasks_queued that the claim
  -- made before priorities existed; for flows with other levels (queue_levels, migration 0022),
  -- a walk per level. One statement each, so that the common claim pays for no level machinery
  -- (worker_bench --only single --runs 200000 --workers 4 on 16 cores, against the release before
  -- priorities: the walk per level for every flow drained at 0.90 of its rate at batch 64, two
  -- alternated pairs; this split at 0.98, and 1.00 at batch 512, six pairs).
  -- (A level other than 0 of any flow served: a probe of queue_levels_pkey per flow.)
  -- A third form when the gated claims left no room (a backlog of gated tasks): the tasks claimed
  -- already, without the walk or its update.
  IF v_room <= 0 THEN
    RETURN QUERY
    WITH mine AS (
      SELECT t.id, t.run_id, t.flow_slug, t.flow_version, t.step_slug, t.task_index, t.attempt,
             t.input, t.timeout_ms, t.lease_expires_at
      FROM flowreg.tasks t WHERE t.id = ANY (v_direct)
      UNION ALL
      SELECT g.id, g.run_id, g.flow_slug, g.flow_version, g.step_slug, g.task_index, g.attempt,
             g.input, g.timeout_ms, g.lease_expires_at
      FROM unnest(v_gated) g
    )
    SELECT c.id, c.run_id, c.flow_slug, c.flow_version, c.step_slug, c.task_index, c.attempt,
           coalesce(c.input,
                    CASE WHEN cardinality(fs.deps) = 0
                         THEN (SELECT r.input FROM flowreg.runs r WHERE r.id = c.run_id)
                         ELSE (SELECT jsonb_object_agg(d.step_slug, d.output)
                               FROM flowreg.step_states d
                               WHERE d.run_id = c.run_id AND d.step_slug = ANY (fs.deps)
                                 AND d.status = 'completed') END),
           fs.max_attempts, c.timeout_ms, c.lease_expires_at
    FROM mine c
    LEFT JOIN LATERAL (
      SELECT f.deps, f.max_attempts FROM flowreg.flow_steps f
      WHERE f.flow_slug = c.flow_slug AND f.version = c.flow_version AND f.step_slug = c.step_slug
      OFFSET 0) fs ON true;
  ELSIF EXISTS (SELECT FROM unnest(v_slugs, v_versions) AS f(slug, version)
             CROSS JOIN LATERAL (SELECT FROM flowreg.queue_levels l
                                 WHERE l.flow_slug = f.slug AND l.flow_version = f.version
                                   AND l.priority <> 0 LIMIT 1) l) THEN
    RETURN QUERY
    WITH cand AS (
      -- Per flow, its priority levels highest first (queue_levels, and 0: migration 0022), and per
      -- level its due tasks oldest first: a walk of tasks_queued that stops at its level's first
      -- task not yet due, or when the flow has given p_limit tasks (the walks run lazily, one
      -- level after the other, and lock only the rows they give). Then the flows' candidates,
      -- highest priority first, then oldest.
      SELECT c.id, c.priority, c.available_at
      FROM unnest(v_slugs, v_versions) AS f(slug, version)
      CROSS JOIN LATERAL (
        SELECT q.id, q.priority, q.available_at
        FROM unnest(ARRAY(SELECT l.priority FROM flowreg.queue_levels l
                          WHERE l.flow_slug = f.slug AND l.flow_version = f.version
                          UNION SELECT 0 ORDER BY 1 DESC)) AS lv(priority)
        CROSS JOIN LATERAL (
          SELECT q.id, q.priority, q.available_at FROM flowreg.tasks q
          -- tasks_queued's key (migration 0022), then the names, which tell apart flows whose
          -- hashes are equal.
          WHERE q.status = 'queued'
            AND hashtextextended(q.flow_slug || ' ' || q.flow_version, 0)
                = hashtextextended(f.slug || ' ' || f.version, 0)
            AND q.priority = lv.priority AND q.gate IS NULL
            AND q.flow_slug = f.slug AND q.flow_version = f.version
            AND q.available_at <= now()
          ORDER BY q.available_at
          LIMIT greatest(v_room, 0)
          FOR UPDATE SKIP LOCKED) q
        LIMIT greatest(v_room, 0)) c
      ORDER BY c.priority DESC, c.available_at
      LIMIT greatest(v_room, 0)
    ),
    -- The rows are locked by cand: the UPDATE finds them by primary key probes (`= ANY` of an
    -- array), never by a join the planner could turn into a merge join over a scan of tasks.
    claimed AS (
      UPDATE flowreg.tasks t
      SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker, started_at = now(),
          lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms)
      WHERE t.id = ANY (ARRAY(SELECT cand.id FROM cand))
      RETURNING t.id, t.run_id, t.flow_slug, t.flow_version, t.step_slug, t.task_index, t.attempt,
                t.input, t.timeout_ms, t.lease_expires_at
    ),
    mine AS (
      SELECT * FROM claimed
      UNION ALL
      SELECT t.id, t.run_id, t.flow_slug, t.flow_version, t.step_slug, t.task_index, t.attempt,
             t.input, t.timeout_ms, t.lease_expires_at
      FROM flowreg.tasks t WHERE t.id = ANY (v_direct)
      UNION ALL
      SELECT g.id, g.run_id, g.flow_slug, g.flow_version, g.step_slug, g.task_index, g.attempt,
             g.input, g.timeout_ms, g.lease_expires_at
      FROM unnest(v_gated) g
    )
    -- A single step's task stores no input (a map step's stores its element): it is the run's input
    -- for a root step, else the object of its completed dependencies' outputs by step slug (a
    -- skipped one has none: migration 0027), read here by primary key (runs or step_states) after
    -- its step (flow_steps: its dependencies and attempts).
    SELECT c.id, c.run_id, c.flow_slug, c.flow_version, c.step_slug, c.task_index, c.attempt,
           coalesce(c.input,
                    CASE WHEN cardinality(fs.deps) = 0
                         THEN (SELECT r.input FROM flowreg.runs r WHERE r.id = c.run_id)
                         ELSE (SELECT jsonb_object_agg(d.step_slug, d.output)
                               FROM flowreg.step_states d
                               WHERE d.run_id = c.run_id AND d.step_slug = ANY (fs.deps)
                                 AND d.status = 'completed') END),
           fs.max_attempts, c.timeout_ms, c.lease_expires_at
    FROM mine c
    LEFT JOIN LATERAL (
      SELECT f.deps, f.max_attempts FROM flowreg.flow_steps f
      WHERE f.flow_slug = c.flow_slug AND f.version = c.flow_version AND f.step_slug = c.step_slug
      OFFSET 0) fs ON true;
  ELSE
    RETURN QUERY
    WITH cand AS (
      -- Every flow's due tasks oldest first: a walk of tasks_queued at level 0 (migration 0022)
      -- that stops at p_limit, or at the first task not yet due.
      SELECT c.id, c.available_at
      FROM unnest(v_slugs, v_versions) AS f(slug, version)
      CROSS JOIN LATERAL (
        SELECT q.id, q.available_at FROM flowreg.tasks q
        -- tasks_queued's key (migration 0022), then the names, which tell apart flows whose
        -- hashes are equal.
        WHERE q.status = 'queued'
          AND hashtextextended(q.flow_slug || ' ' || q.flow_version, 0)
              = hashtextextended(f.slug || ' ' || f.version, 0)
          AND q.priority = 0 AND q.gate IS NULL
          AND q.flow_slug = f.slug AND q.flow_version = f.version
          AND q.available_at <= now()
        ORDER BY q.available_at
        LIMIT greatest(v_room, 0)
        FOR UPDATE SKIP LOCKED) c
      ORDER BY c.available_at
      LIMIT greatest(v_room, 0)
    ),
    -- The rows are locked by cand: the UPDATE finds them by primary key probes (`= ANY` of an
    -- array), never by a join the planner could turn into a merge join over a scan of tasks.
    claimed AS (
      UPDATE flowreg.tasks t
      SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker, started_at = now(),
          lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms)
      WHERE t.id = ANY (ARRAY(SELECT cand.id FROM cand))
      RETURNING t.id, t.run_id, t.flow_slug, t.flow_version, t.step_slug, t.task_index, t.attempt,
                t.input, t.timeout_ms, t.lease_expires_at
    ),
    mine AS (
      SELECT * FROM claimed
      UNION ALL
      SELECT t.id, t.run_id, t.flow_slug, t.flow_version, t.step_slug, t.task_index, t.attempt,
             t.input, t.timeout_ms, t.lease_expires_at
      FROM flowreg.tasks t WHERE t.id = ANY (v_direct)
      UNION ALL
      SELECT g.id, g.run_id, g.flow_slug, g.flow_version, g.step_slug, g.task_index, g.attempt,
             g.input, g.timeout_ms, g.lease_expires_at
      FROM unnest(v_gated) g
    )
    -- A single step's task stores no input (a map step's stores its element): it is the run's input
    -- for a root step, else the object of its completed dependencies' outputs by step slug (a
    -- skipped one has none: migration 0027), read here by primary key (runs or step_states) after
    -- its step (flow_steps: its dependencies and attempts).
    SELECT c.id, c.run_id, c.flow_slug, c.flow_version, c.step_slug, c.task_index, c.attempt,
           coalesce(c.input,
                    CASE WHEN cardinality(fs.deps) = 0
                         THEN (SELECT r.input FROM flowreg.runs r WHERE r.id = c.run_id)
                         ELSE (SELECT jsonb_object_agg(d.step_slug, d.output)
                               FROM flowreg.step_states d
                               WHERE d.run_id = c.run_id AND d.step_slug = ANY (fs.deps)
                                 AND d.status = 'completed') END),
           fs.max_attempts, c.timeout_ms, c.lease_expires_at
    FROM mine c
    LEFT JOIN LATERAL (
      SELECT f.deps, f.max_attempts FROM flowreg.flow_steps f
      WHERE f.flow_slug = c.flow_slug AND f.version = c.flow_version AND f.step_slug = c.step_slug
      OFFSET 0) fs ON true;
  END IF;
END $$;

-- Bitmap scans off: a claim walks tasks_queued in available_at order and stops at its limit; a
-- generic plan made while the queue was nearly empty and analyzed so was seen scanning it by
-- bitmap and sorting (a bitmap scan reads every queued task of the flow before the first).
ALTER FUNCTION flowreg._claim(text, jsonb, int, bigint, int)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
  SET jit = off;
