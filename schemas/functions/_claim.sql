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
  -- The claim frontier (see below): per flow of v_slugs, the hex of its hash, which names its
  -- session settings, and whether this claim sweeps it; the tasks the walk took (locked), and per
  -- task its flow's place in v_slugs, its level (NULL: the walk at level 0) and its available_at.
  v_hexes text[];
  v_sweeps boolean[];
  v_ids bigint[];
  v_ns int[];
  v_levels int[];
  v_ats timestamptz[];
  v_leases_from timestamptz;  -- the lapsed leases this claim looks for expired since then
  v_began timestamptz := clock_timestamp();  -- when this claim began (a sweep's time)
  v_next text;  -- when the flows this claim swept are swept again (epoch seconds)
BEGIN
  IF v_direct IS NOT NULL THEN
    v_set := set_config('flowreg.claimed', '', true);
  END IF;
  -- The claim frontier (issue 52). A walk of tasks_queued from a flow's oldest entry steps over
  -- the entries of every task claimed since the oldest snapshot still held (a pg_dump, a long
  -- report, a replica's hot_standby_feedback): they stay in the index, dead but not yet removable,
  -- so under a held snapshot each claim of a drain paid for all the claims before it. So a
  -- session remembers, per flow and level, the newest available_at it claimed less 10 ms (session
  -- settings read by _front), and its next walk of that level starts there. A task can be queued
  -- behind a frontier: its transaction began (its now()) more than the 10 ms before it committed,
  -- or a claim that had locked it rolled back, or its gate or level changed. Such a task is found
  -- by the sweep: per session and flow, a claim walks the flow's levels from their oldest entries.
  -- Lapsed leases likewise: a claim looks for the leases expired since its session's previous
  -- claim of the flow, less 10 ms (flowreg.leased_<hex>), and a sweep for all of them. A session's
  -- first claim of a flow sweeps it; then once a second, or less often when sweeping was slow:
  -- under a held snapshot a sweep steps over the entries of every task claimed and completed since
  -- it (in tasks_queued and tasks_leased), and a sweep a second of each session took most of the
  -- server's CPU after minutes of a steady drain (worker_bench --only soak --soak-hold). So the
  -- next sweep comes after 50 times what the sweeping claim took, at least 1 s and at most 60 s
  -- (flowreg.swept_<hex>: when it is due, epoch seconds; one more than 60 s ahead, as after the
  -- clock went back, is due now): sweeps cost a session at most a fiftieth of its time, or one
  -- sweep a minute. (Per flow, not per session: a session makes the round trips of many flows,
  -- worker/lanes.hpp.)
  -- (The arrays are aggregated from one stream of rows: aligned, as the walks need them.)
  SELECT array_agg(f.slug), array_agg(f.version), array_agg(f.hex), array_agg(f.sweep),
         -- Leases are looked for from the earliest of the flows' bounds (any flow swept: all).
         CASE WHEN NOT bool_or(f.sweep)
              THEN min(to_timestamp(nullif(current_setting('flowreg.leased_' || f.hex, true),
                                           '')::float8) - interval '10 ms') END
  INTO v_slugs, v_versions, v_hexes, v_sweeps, v_leases_from
  FROM jsonb_to_recordset(p_flows) AS j(slug text, version text)
  CROSS JOIN LATERAL (
    SELECT j.slug, j.version, h.hex,
           coalesce(nullif(current_setting('flowreg.swept_' || h.hex, true), '')::float8
                    NOT BETWEEN extract(epoch FROM now())::float8 + 1e-6
                            AND extract(epoch FROM now())::float8 + 60.0, true) AS sweep
    FROM (SELECT to_hex(hashtextextended(j.slug || ' ' || j.version, 0)) AS hex) h) f;
  IF v_slugs IS NULL OR p_limit <= 0 THEN
    RETURN;
  END IF;
  v_leases_from := coalesce(v_leases_from, '-infinity');

  IF EXISTS (SELECT 1 FROM flowreg.tasks t
             WHERE t.status = 'started' AND t.lease_expires_at < now()
               AND t.lease_expires_at >= v_leases_from) THEN
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
        AND t.lease_expires_at >= v_leases_from
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
        AND e.lease_expires_at >= v_leases_from
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

  -- No room for a walk (a chain's next steps created claimed by this call, or gated tasks, filled
  -- it): the tasks claimed already, without the walk or its update. The session's settings are
  -- left as they were (the next claim looks for these leases again), unless this claim swept: its
  -- sweep of the leases is done, and its walk's waits for its next sweep.
  IF v_room <= 0 THEN
    IF true = ANY (v_sweeps) THEN
      v_next := flowreg._next_sweep(v_began);
      PERFORM set_config('flowreg.leased_' || x.h, extract(epoch FROM now())::text, false),
              CASE WHEN x.w THEN set_config('flowreg.swept_' || x.h, v_next, false) END
      FROM unnest(v_hexes, v_sweeps) AS x(h, w);
    END IF;
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
    -- As below.
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
    RETURN;
  END IF;

  -- The walk of tasks_queued, in one of two forms: for flows whose tasks all have priority 0 (the
  -- common case), the walk the claim made before priorities existed; for flows with other levels
  -- (queue_levels, migration 0022), a walk per level. Separate, so that the common claim pays
  -- for no level machinery (worker_bench --only single --runs 200000 --workers 4 on 16 cores,
  -- against the release before priorities: the walk per level for every flow drained at 0.90 of
  -- its rate at batch 64, two alternated pairs; this split at 0.98, and 1.00 at batch 512, six
  -- pairs). (A level other than 0 of any flow served: a probe of queue_levels_pkey per flow.)
  -- The tasks it gives are locked; each (flow, level) walk's frontier moves to the newest of
  -- them, less its slack.
  IF EXISTS (SELECT FROM unnest(v_slugs, v_versions) AS f(slug, version)
             CROSS JOIN LATERAL (SELECT FROM flowreg.queue_levels l
                                 WHERE l.flow_slug = f.slug AND l.flow_version = f.version
                                   AND l.priority <> 0 LIMIT 1) l) THEN
    -- Per flow, its priority levels highest first (queue_levels, and 0: migration 0022), and per
    -- level its due tasks oldest from the level's frontier: a walk of tasks_queued that stops at
    -- its level's first task not yet due, or when the flow has given v_room tasks (the walks run
    -- lazily, one level after the other, and lock only the rows they give). Then the flows'
    -- candidates, highest priority first, then oldest.
    SELECT array_agg(c.id), array_agg(c.n), array_agg(c.priority), array_agg(c.available_at)
    INTO v_ids, v_ns, v_levels, v_ats
    FROM (
      SELECT c.id, f.n, c.priority, c.available_at
      FROM unnest(v_slugs, v_versions, v_hexes, v_sweeps)
           WITH ORDINALITY AS f(slug, version, hex, sweep, n)
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
            AND q.available_at >= CASE WHEN f.sweep THEN '-infinity' ELSE coalesce(
                  flowreg._front(f.hex, lv.priority), '-infinity') END
            AND q.available_at <= now()
          ORDER BY q.available_at
          LIMIT greatest(v_room, 0)
          FOR UPDATE SKIP LOCKED) q
        LIMIT greatest(v_room, 0)) c
      ORDER BY c.priority DESC, c.available_at
      LIMIT greatest(v_room, 0)) c;
  ELSE
    -- Every flow's due tasks oldest first from its frontier: a walk of tasks_queued at level 0
    -- that stops at v_room, or at the first task not yet due.
    SELECT array_agg(c.id), array_agg(c.n), array_agg(c.available_at)
    INTO v_ids, v_ns, v_ats
    FROM (
      SELECT c.id, f.n, c.available_at
      FROM unnest(v_slugs, v_versions, v_hexes, v_sweeps)
           WITH ORDINALITY AS f(slug, version, hex, sweep, n)
      CROSS JOIN LATERAL (
        SELECT q.id, q.available_at FROM flowreg.tasks q
        -- tasks_queued's key (migration 0022), then the names, which tell apart flows whose
        -- hashes are equal.
        WHERE q.status = 'queued'
          AND hashtextextended(q.flow_slug || ' ' || q.flow_version, 0)
              = hashtextextended(f.slug || ' ' || f.version, 0)
          AND q.priority = 0 AND q.gate IS NULL
          AND q.flow_slug = f.slug AND q.flow_version = f.version
          AND q.available_at >= CASE WHEN f.sweep THEN '-infinity' ELSE coalesce(
                flowreg._front(f.hex, 0), '-infinity') END
          AND q.available_at <= now()
        ORDER BY q.available_at
        LIMIT greatest(v_room, 0)
        FOR UPDATE SKIP LOCKED) c
      ORDER BY c.available_at
      LIMIT greatest(v_room, 0)) c;
  END IF;
  -- The session's settings, in one statement: the frontiers the walk moved, when each flow's
  -- leases were looked for, and when the flows it swept are swept again.
  IF true = ANY (v_sweeps) THEN
    v_next := flowreg._next_sweep(v_began);
  END IF;
  PERFORM set_config(x.name, x.value, false)
  FROM (SELECT 'flowreg.front_' || v_hexes[m.n] || '_' || to_hex(m.priority),
               extract(epoch FROM m.at - interval '10 ms')::text
        FROM (SELECT u.n, u.priority, max(u.at) AS at
              FROM unnest(v_ns, coalesce(v_levels, array_fill(0, ARRAY[coalesce(
                                                       cardinality(v_ns), 0)])),
                          v_ats) AS u(n, priority, at)
              GROUP BY u.n, u.priority) m
        UNION ALL
        SELECT 'flowreg.leased_' || h, extract(epoch FROM now())::text FROM unnest(v_hexes) h
        UNION ALL
        SELECT 'flowreg.swept_' || x.h, v_next
        FROM unnest(v_hexes, v_sweeps) AS x(h, w) WHERE x.w) x(name, value);

  RETURN QUERY
  -- The rows are locked by the walk: the UPDATE finds them by primary key probes (`= ANY` of an
  -- array), never by a join the planner could turn into a merge join over a scan of tasks.
  WITH claimed AS (
    UPDATE flowreg.tasks t
    SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker, started_at = now(),
        lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms)
    WHERE t.id = ANY (v_ids)
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
END $$;

-- Bitmap scans off: a claim walks tasks_queued in available_at order and stops at its limit; a
-- generic plan made while the queue was nearly empty and analyzed so was seen scanning it by
-- bitmap and sorting (a bitmap scan reads every queued task of the flow before the first).
ALTER FUNCTION flowreg._claim(text, jsonb, int, bigint, int)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
  SET jit = off;
