-- Records completions of started tasks whose attempt matches; returns the ids accepted, and the
-- tasks of a chain's next steps it created claimed by the worker of the work() call (claimed_*,
-- NULL when none: ids, runs, flow slugs and versions, step slugs, inputs, attempts allowed,
-- timeouts, lease ends; each at task index 0 and attempt 1), which work() returns as claimed.
-- p_batch: [{"id", "attempt", "output", "process"}] (an id given twice: the last entry counts;
-- "process": what the attempt cost in a handler process, an array kept with the attempt where its
-- worker is: migration 0031). A step whose last task completed is complete, with its output (a
-- single step's: its one task's; a map step's: its tasks' in task order); then its dependents may
-- start and its run may complete. A run of a one-step flow (no step state: migration 0012)
-- completes at once, its step's output, attempts and worker written into it. A run of a chain
-- (migration 0017: runs.chained, and so its tasks) has no step state for a step not ended: its
-- step's completion inserts the step's state, then creates the next step's task (claimed by the
-- worker within work(), as _account_steps does) or, for the leaf, completes the run. A task leaves
-- the queue when done (see migration 0009): a single step's at once, a map step's when its step
-- completes; its attempts and worker are added to its step state (or its run, above).
-- REQUIRES: the runs of the tasks that are not solo are locked (_lock_step_runs_of). A solo task
-- (a one-step flow's, migration 0013) is locked by its DELETE here, then its run by its UPDATE
-- (the lock order: see README).
--
-- Cost per task flat in the batch size, plans stable by construction: each statement is a nested
-- loop driven by the batch (or by arrays made from it), probing the primary key of ONE table per
-- row given. Its join conditions are written `key = ANY (ARRAY[row.key])`: a parameterized index
-- probe, yet no merge-joinable equality, so no plan can read the table whole as the outer side
-- (with `key = row.key`, a generic plan made while tasks was nearly empty walked all of tasks_pkey
-- once per call; tests/pg/run_store_test.cpp counts the rows fetched). Sequential scans, hash and
-- merge joins are off too. The status tests are written `status || '' = ...` so that no partial
-- index on status (tasks_leased, tasks_queued) matches. (The previous form looked every row up in
-- jsonb objects keyed by id: a key built and searched per column, which cost more than the
-- probes.)
CREATE OR REPLACE FUNCTION flowreg._complete_locked(
  p_batch jsonb, OUT accepted bigint[], OUT claimed_ids bigint[], OUT claimed_runs uuid[],
  OUT claimed_flows text[], OUT claimed_versions text[], OUT claimed_steps text[],
  OUT claimed_inputs jsonb[], OUT claimed_max_attempts int[], OUT claimed_timeouts bigint[],
  OUT claimed_leases timestamptz[])
LANGUAGE plpgsql AS $$
DECLARE
  v_acc bigint[];
  -- The completed tasks per step: the step, its flow, how many, the output (a single step's),
  -- the attempts they took and the worker of one of them.
  v_runs uuid[];
  v_steps text[];
  v_flows text[];
  v_versions text[];
  v_n int[];
  v_outputs jsonb[];
  v_attempts int[];
  v_workers text[];
  -- Steps completed: for _account_steps; the map steps among them, whose tasks leave now.
  v_druns uuid[];
  v_dsteps text[];
  v_dflows text[];
  v_dversions text[];
  v_mruns uuid[];
  v_msteps text[];
  v_going uuid[];
  v_one_row boolean[];  -- per step above: its run keeps its state (a one-step flow's); NULL for
                        -- a chain's (v_chained)
  v_chained boolean[];  -- per step above: its run is a chain's (migration 0017)
  v_started timestamptz[];  -- per step above, a chain's: its start (its task's created_at)
  v_processes jsonb[];  -- per step above, a single step's: what its task cost in a handler process
  v_claim jsonb;        -- see _account_steps: a work() call's worker takes what it has room for
  v_queued text[];      -- flows of the tasks created queued
  v_ended uuid[];
BEGIN
  WITH b AS MATERIALIZED (
    SELECT DISTINCT ON (x.id) x.id, x.attempt, x.output, x.process
    FROM (SELECT (e->>'id')::bigint AS id, (e->>'attempt')::int AS attempt,
                 coalesce(e->'output', 'null'::jsonb) AS output,
                 CASE WHEN jsonb_typeof(e->'process') = 'array' THEN e->'process' END AS process,
                 i
          FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS j(e, i)) x
    ORDER BY x.id, x.i DESC
  ),
  gone AS (
    -- A single step's task (NULL input: it reads its input when claimed) leaves the queue: its
    -- output goes to its step state (below). A map step's task keeps its output until its step
    -- completes, the step's output being made of them; then they leave too.
    DELETE FROM flowreg.tasks t USING b
    WHERE t.id = ANY (ARRAY[b.id]) AND t.input IS NULL AND t.status || '' = 'started'
      AND t.attempt = b.attempt
    RETURNING t.id, t.run_id, t.step_slug, t.flow_slug, t.flow_version, t.attempt, t.worker_id,
              b.output, t.chained, t.created_at, b.process
  ),
  kept AS (
    UPDATE flowreg.tasks t
    SET status = 'completed', output = b.output, finished_at = now(), lease_expires_at = NULL,
        process = b.process
    FROM b
    WHERE t.id = ANY (ARRAY[b.id]) AND t.input IS NOT NULL AND t.status || '' = 'started'
      AND t.attempt = b.attempt
    RETURNING t.id, t.run_id, t.step_slug, t.flow_slug, t.flow_version, t.attempt, t.worker_id,
              NULL::jsonb AS output, false AS chained, NULL::timestamptz AS created_at,
              NULL::jsonb AS process
  ),
  done AS (SELECT * FROM gone UNION ALL SELECT * FROM kept),
  -- Per flow version of the batch: whether it is one single step, whose runs keep their step's
  -- state (migration 0012 moved the live runs of such a flow; see below for one it did not): one
  -- lookup per flow version, not per task, keyed '<flow slug> <version>' (slugs hold no space).
  -- Not looked up for a chain's task, which says its layout itself.
  one_row AS (
    SELECT jsonb_object_agg(f.flow_slug || ' ' || f.flow_version, l.one_row) AS m
    FROM (SELECT DISTINCT d.flow_slug, d.flow_version FROM done d WHERE NOT d.chained) f
    -- (A step with a condition, migration 0027, never has that layout.)
    CROSS JOIN LATERAL (SELECT count(*) = 1 AND bool_and(fs.kind = 'single' AND NOT fs.checked)
                          AS one_row
                        FROM flowreg.flow_steps fs
                        WHERE fs.flow_slug = f.flow_slug AND fs.version = f.flow_version
                        OFFSET 0) l
  ),
  per AS (
    SELECT d.run_id, d.step_slug, min(d.flow_slug) AS flow_slug,
           min(d.flow_version) AS flow_version, count(*)::int AS n,
           (array_agg(d.output))[1] AS output, sum(d.attempt)::int AS attempts,
           (array_agg(d.worker_id))[1] AS worker_id,
           CASE WHEN NOT bool_or(d.chained)
                THEN ((SELECT o.m FROM one_row o)
                        ->> (min(d.flow_slug) || ' ' || min(d.flow_version)))::boolean END
             AS one_row,
           bool_or(d.chained) AS chained, min(d.created_at) AS started_at,
           (array_agg(d.process))[1] AS process
    FROM done d GROUP BY 1, 2
  )
  SELECT (SELECT array_agg(d.id) FROM done d), p.*
  INTO v_acc, v_runs, v_steps, v_flows, v_versions, v_n, v_outputs, v_attempts, v_workers,
       v_one_row, v_chained, v_started, v_processes
  FROM (SELECT array_agg(run_id), array_agg(step_slug), array_agg(flow_slug),
               array_agg(flow_version), array_agg(n), array_agg(output), array_agg(attempts),
               array_agg(worker_id), array_agg(one_row), array_agg(chained),
               array_agg(started_at), array_agg(process)
        FROM per) p;
  IF v_acc IS NULL THEN
    accepted := '{}';
    RETURN;
  END IF;

  -- A run of a one-step flow: its step's completion completes it. One started in the layout
  -- before 0012 (attempts NULL: by a start that was waiting for the upgrade's lock on runs while
  -- it committed) completes its step state too.
  IF true = ANY (v_one_row) THEN
    WITH ended AS (
      UPDATE flowreg.runs r
      SET status = 'completed', remaining_leaves = 0, finished_at = now(),
          output = jsonb_build_object(p.step_slug, p.output), attempts = r.attempts + p.attempts,
          worker_id = CASE WHEN r.attempts IS NOT NULL THEN p.worker_id END,
          process = CASE WHEN r.attempts IS NOT NULL THEN p.process END
      FROM unnest(v_runs, v_steps, v_outputs, v_attempts, v_workers, v_one_row, v_processes)
           AS p(run_id, step_slug, output, attempts, worker_id, one_row, process)
      WHERE p.one_row AND r.id = ANY (ARRAY[p.run_id]) AND r.status = 'started'
      RETURNING r.id, r.attempts IS NULL AS old_layout, p.step_slug, p.output, p.attempts,
                p.worker_id, p.process
    ),
    old_layout AS (
      UPDATE flowreg.step_states s
      SET status = 'completed', remaining_tasks = 0, finished_at = now(), output = e.output,
          attempts = s.attempts + e.attempts, worker_id = e.worker_id, process = e.process
      FROM ended e
      WHERE e.old_layout AND s.run_id = ANY (ARRAY[e.id]) AND s.step_slug = ANY (ARRAY[e.step_slug])
        AND s.status = 'started'
    )
    SELECT array_agg(ended.id) INTO v_ended FROM ended;
    IF v_ended IS NOT NULL THEN
      PERFORM pg_notify('flowreg_runs', id::text || ' completed') FROM unnest(v_ended) AS id;
    END IF;
  END IF;

  -- A chain's step (migration 0017): its step state is written now, ended; then the next step's
  -- task is created (claimed by this work() call's worker as far as it has room, as in
  -- _account_steps), or the leaf's completion completes its run with the leaf's output. Its run is
  -- locked and started (its task was still started).
  IF true = ANY (v_chained) THEN
    v_claim := nullif(current_setting('flowreg.claim', true), '')::jsonb;
    -- The next steps' tasks take their ids here, so that those claimed by this call's worker
    -- (mine) are returned from these rows, with their input (this step's output), rather than
    -- read back by _claim.
    WITH c AS MATERIALIZED (
      SELECT p.run_id, p.step_slug, p.flow_slug, p.flow_version, p.output, p.attempts, p.worker_id,
             p.started_at, p.process, fs.step_index, fs.is_leaf, nx.step_slug AS next_slug,
             nx.timeout_ms AS next_timeout, nx.max_attempts AS next_max_attempts,
             -- The run's own priority, else the next step's (migration 0022).
             CASE WHEN nx.step_slug IS NOT NULL
                  THEN coalesce((SELECT r.priority FROM flowreg.runs r WHERE r.id = p.run_id),
                                nx.priority) END AS next_priority,
             -- Its gate (a concurrency limit, migration 0023), NULL for most: its run's input.
             CASE WHEN nx.gate_prefix IS NOT NULL
                  THEN flowreg._gate_of(nx.gate_prefix,
                                        (SELECT r.input FROM flowreg.runs r WHERE r.id = p.run_id),
                                        nx.gate_path) END AS next_gate,
             CASE WHEN nx.step_slug IS NOT NULL THEN nextval('flowreg.tasks_id_seq') END AS next_id,
             -- Claimed by this call's worker: a next step of a flow it serves, without a gate
             -- (that one waits for _claim_gated), as far as it has room.
             coalesce(v_claim->'flows' ? (p.flow_slug || ' ' || p.flow_version)
                        AND nx.step_slug IS NOT NULL AND nx.gate_prefix IS NULL
                        AND row_number() OVER (PARTITION BY
                              v_claim->'flows' ? (p.flow_slug || ' ' || p.flow_version)
                                AND nx.step_slug IS NOT NULL AND nx.gate_prefix IS NULL)
                            <= (v_claim->>'left')::int,
                      false) AS mine
      FROM unnest(v_runs, v_steps, v_flows, v_versions, v_outputs, v_attempts, v_workers,
                  v_chained, v_started, v_processes)
           AS p(run_id, step_slug, flow_slug, flow_version, output, attempts, worker_id, chained,
                started_at, process)
      CROSS JOIN LATERAL (SELECT f.step_index, f.is_leaf FROM flowreg.flow_steps f
                          WHERE f.flow_slug = p.flow_slug AND f.version = p.flow_version
                            AND f.step_slug = p.step_slug OFFSET 0) fs
      -- The next step: the one step depending on this one (none for the leaf), then its options,
      -- each probed by its whole primary key (as a join inside one subquery, the generic plan
      -- probed flow_steps by flow version only and filtered: every step of the flow read for
      -- each task).
      LEFT JOIN LATERAL (SELECT fd.step_slug FROM flowreg.flow_deps fd
                         WHERE fd.flow_slug = p.flow_slug AND fd.version = p.flow_version
                           AND fd.dep_slug = p.step_slug OFFSET 0) nd ON true
      LEFT JOIN LATERAL (SELECT n.step_slug, n.timeout_ms, n.max_attempts, n.priority,
                                n.gate_prefix, n.gate_path
                         FROM flowreg.flow_steps n
                         WHERE n.flow_slug = p.flow_slug AND n.version = p.flow_version
                           AND n.step_slug = nd.step_slug OFFSET 0) nx ON true
      WHERE p.chained
    ),
    st AS (
      INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps, status,
                                       remaining_tasks, task_count, output, started_at,
                                       finished_at, attempts, worker_id, process)
      SELECT c.run_id, c.step_slug, c.step_index, 'single', 0, 'completed', 0, 1, c.output,
             c.started_at, now(), c.attempts, c.worker_id, c.process
      FROM c
    ),
    started AS (
      INSERT INTO flowreg.tasks (id, run_id, step_slug, task_index, flow_slug, flow_version,
                                 timeout_ms, status, attempt, worker_id, started_at,
                                 lease_expires_at, chained, created_at, priority, gate)
      OVERRIDING SYSTEM VALUE
      SELECT k.next_id, k.run_id, k.next_slug, 0, k.flow_slug, k.flow_version, k.next_timeout,
             CASE WHEN k.mine THEN 'started' ELSE 'queued' END, CASE WHEN k.mine THEN 1 ELSE 0 END,
             CASE WHEN k.mine THEN v_claim->>'worker' END, CASE WHEN k.mine THEN now() END,
             CASE WHEN k.mine
                  THEN flowreg._lease_end(k.next_timeout, (v_claim->>'lease_ms')::bigint) END,
             true, now(), k.next_priority, k.next_gate
      FROM c k WHERE k.next_slug IS NOT NULL
    ),
    ended AS (
      UPDATE flowreg.runs r
      SET status = 'completed', remaining_leaves = 0, finished_at = now(),
          output = jsonb_build_object(c.step_slug, c.output)
      FROM c
      WHERE c.is_leaf AND r.id = ANY (ARRAY[c.run_id]) AND r.status = 'started'
      RETURNING r.id
    )
    SELECT (SELECT array_agg(DISTINCT k.flow_slug) FROM c k
            WHERE k.next_slug IS NOT NULL AND NOT k.mine),
           (SELECT array_agg(e.id) FROM ended e),
           m.*
    INTO v_queued, v_ended, claimed_ids, claimed_runs, claimed_flows, claimed_versions,
         claimed_steps, claimed_inputs, claimed_max_attempts, claimed_timeouts, claimed_leases
    FROM (SELECT array_agg(k.next_id), array_agg(k.run_id), array_agg(k.flow_slug),
                 array_agg(k.flow_version), array_agg(k.next_slug),
                 array_agg(jsonb_build_object(k.step_slug, k.output)),
                 array_agg(k.next_max_attempts), array_agg(k.next_timeout),
                 array_agg(flowreg._lease_end(k.next_timeout, (v_claim->>'lease_ms')::bigint))
          FROM c k WHERE k.mine) m;
    -- The worker's room shrinks by these tasks (for _account_steps' in the same call); work()
    -- returns them itself.
    PERFORM flowreg._claimed_here(v_claim, claimed_ids, false);
    IF v_queued IS NOT NULL THEN
      PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_queued) AS f;
    END IF;
    IF v_ended IS NOT NULL THEN
      PERFORM pg_notify('flowreg_runs', id::text || ' completed') FROM unnest(v_ended) AS id;
    END IF;
  END IF;

  -- A step whose last task completed is complete, with its output: a single step's is its one
  -- task's (completed just now), a map step's its tasks' in task order (a flow step's: its
  -- children's, migration 0028) (a separate statement from
  -- the one above, so that it sees their outputs). Skipped when every step given was a one-step
  -- flow's (the statements below then have nothing to do either).
  IF false = ANY (v_one_row) THEN
    WITH upd AS (
      UPDATE flowreg.step_states s
      SET remaining_tasks = s.remaining_tasks - p.n,
          status = CASE WHEN s.remaining_tasks = p.n THEN 'completed' ELSE s.status END,
          finished_at = CASE WHEN s.remaining_tasks = p.n THEN now() END,
          output = CASE WHEN s.remaining_tasks <> p.n THEN NULL
                        WHEN s.kind IN ('map', 'flow_map') THEN
                          (SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM flowreg.tasks t
                           WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug
                             AND NOT t.solo)
                        -- A flow step's (migration 0028): its one child's, handed back as a task
                        -- that keeps its output too (it has an input).
                        WHEN s.kind = 'flow' THEN
                          (SELECT t.output FROM flowreg.tasks t
                           WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug
                             AND t.task_index = 0 AND NOT t.solo)
                        ELSE p.output END,
          attempts = s.attempts + p.attempts,
          worker_id = p.worker_id,
          -- What its tasks cost in handler processes (migration 0031): a single step's task's; a
          -- map step's tasks' in task order, when one of them ran in one.
          process = CASE WHEN s.remaining_tasks <> p.n THEN NULL
                         WHEN s.kind = 'map' THEN
                           (SELECT CASE WHEN bool_or(t.process IS NOT NULL)
                                        THEN jsonb_agg(t.process ORDER BY t.task_index) END
                            FROM flowreg.tasks t
                            WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug
                              AND NOT t.solo)
                         WHEN s.kind IN ('flow', 'flow_map') THEN NULL
                         ELSE p.process END
      FROM unnest(v_runs, v_steps, v_flows, v_versions, v_n, v_outputs, v_attempts, v_workers,
                  v_one_row, v_processes)
           AS p(run_id, step_slug, flow_slug, flow_version, n, output, attempts, worker_id, one_row,
                process)
      WHERE NOT p.one_row AND s.run_id = ANY (ARRAY[p.run_id])
        AND s.step_slug = ANY (ARRAY[p.step_slug]) AND s.status = 'started'
      RETURNING s.run_id, s.step_slug, s.status, s.kind, p.flow_slug, p.flow_version
    )
    SELECT array_agg(run_id), array_agg(step_slug), array_agg(flow_slug), array_agg(flow_version),
           array_agg(run_id) FILTER (WHERE kind IN ('map', 'flow', 'flow_map')),
           array_agg(step_slug) FILTER (WHERE kind IN ('map', 'flow', 'flow_map'))
    INTO v_druns, v_dsteps, v_dflows, v_dversions, v_mruns, v_msteps
    FROM upd WHERE status = 'completed';
  END IF;

  IF v_mruns IS NOT NULL THEN
    -- A completed map or flow step's tasks leave the queue: its output is made of theirs.
    -- Each step's tasks are found by a probe of tasks_by_run in a lateral subquery, then deleted
    -- through tasks_pkey (as one join, a plan made while tasks was small walked all of
    -- tasks_by_run as the outer side).
    DELETE FROM flowreg.tasks t
    WHERE t.id = ANY (ARRAY(SELECT k.id FROM unnest(v_mruns, v_msteps) AS m(run_id, step_slug)
                            CROSS JOIN LATERAL (
                              SELECT k.id FROM flowreg.tasks k
                              WHERE k.run_id = m.run_id AND k.step_slug = m.step_slug
                                AND NOT k.solo OFFSET 0) k));
  END IF;

  IF v_druns IS NOT NULL THEN
    v_going := flowreg._account_steps(v_druns, v_dsteps, v_dflows, v_dversions);
    IF cardinality(v_going) > 0 THEN
      PERFORM flowreg._start_steps(v_going);
    END IF;
  END IF;
  accepted := v_acc;
END $$;

ALTER FUNCTION flowreg._complete_locked(jsonb)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
  SET enable_mergejoin = off SET jit = off;
