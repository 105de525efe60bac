-- Starts every ready step (created, no remaining dependency) of the given runs: creates its tasks,
-- or completes an empty map step at once with [] (and starts what that makes ready, repeatedly),
-- or fails the run when a map step's input is not an array. A sleep step's one task (migration
-- 0025) is created queued, available when its sleep ends: its duration from now, or the RFC 3339
-- time at its pointer in its input (a time gone: at once); a run whose sleep step's input has no
-- such time there fails. A wait step (migration 0026) that finds its signal kept for its run
-- completes at once with its data (the signal is consumed); otherwise it starts to wait: with a
-- task only when it has a timeout (queued, available when the timeout ends), and, waiting for an
-- event, an event_waits row under the key of the values its match reads in its input (a run whose
-- input has no value there fails). Within a work() call, the tasks are created claimed by its
-- worker as far as it has room, as in _account_steps (a sleep or wait step's never); the rest are
-- queued. A step that may be skipped (flow_steps.checked, migration 0027) is skipped when a
-- dependency was skipped (trigger all), when none completed (trigger any), or when its condition
-- (_when) is false for its input (its run's input for a root step, else its completed
-- dependencies' outputs by slug): its state 'skipped', no task, no output; that counts as its end
-- for its dependents and its run, as a completion does. A flow step (migration 0028) starts its
-- child runs (_start_children): one, or one per element of its input array (kind flow_map, whose
-- input is as a map step's; an empty array completes it at once with []); its state is started
-- with a task counted per child run and none created: each child's end hands it one
-- (_run_ended).
-- Then completes the runs that have no step left (their output: their completed leaves').
-- Set-based: one pass handles every ready step of every run given. The ready steps are found
-- from the given runs first (a materialized primary-key lookup), so the cost does not grow with
-- the history of runs of the flow.
-- REQUIRES: the runs are locked (or new in this transaction).
--
-- Plans stable by construction: sequential scans, hash joins and merge joins are off here, so
-- every join is a nested loop driven by the runs given, probing primary keys (step_states,
-- flow_steps, runs): a plan made while the tables were small cannot become a scan of them later.
CREATE OR REPLACE FUNCTION flowreg._start_steps(p_runs uuid[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_done_runs uuid[];
  v_done_steps text[];
  v_done_flows text[];
  v_done_versions text[];
  v_fail_runs uuid[];
  v_fail_errors text[];
  v_flows text[];
  v_n bigint;
  v_claim jsonb;  -- see _account_steps: a work() call's worker takes what it has room for
  v_mine bigint[];
  -- Flow steps started (migration 0028): their runs, slugs, flows, kinds and inputs.
  v_child_runs uuid[];
  v_child_steps text[];
  v_child_flows text[];
  v_child_kinds text[];
  v_child_inputs jsonb[];
BEGIN
  LOOP
    v_claim := nullif(current_setting('flowreg.claim', true), '')::jsonb;
    WITH rr AS MATERIALIZED (
      SELECT r.id, r.flow_slug, r.flow_version, r.input, r.priority FROM flowreg.runs r
      WHERE r.id = ANY (p_runs) AND r.status = 'started'
    ),
    ready AS MATERIALIZED (
      SELECT r.id AS run_id, s.step_slug, fs.kind, r.flow_slug, r.flow_version, fs.timeout_ms,
             coalesce(r.priority, fs.priority) AS priority,
             -- Its tasks' gate (a concurrency limit, migration 0023), NULL for most.
             CASE WHEN fs.gate_prefix IS NOT NULL
                  THEN flowreg._gate_of(fs.gate_prefix, r.input, fs.gate_path) END AS gate,
             -- Only a map step's input is needed here (its elements become its tasks' inputs), and
             -- that of a sleep step until a time in it, of a wait step on an event, or of a flow
             -- step (its child runs' inputs; a single step's: {dependency: output}, its completed
             -- dependencies' only).
             CASE WHEN fs.kind IN ('map', 'flow_map') THEN
                    CASE WHEN cardinality(fs.deps) = 0 THEN r.input
                         ELSE (SELECT d.output FROM flowreg.step_states d
                               WHERE d.run_id = r.id AND d.step_slug = fs.deps[1]) END
                  WHEN fs.sleep_path IS NOT NULL OR jsonb_array_length(fs.wait_match) > 0
                       OR fs.kind = 'flow' THEN
                    CASE WHEN cardinality(fs.deps) = 0 THEN r.input
                         ELSE (SELECT jsonb_object_agg(d.step_slug, d.output)
                               FROM flowreg.step_states d
                               WHERE d.run_id = r.id AND d.step_slug = ANY (fs.deps)
                                 AND d.status = 'completed') END
             END AS input,
             fs.sleep_ms, fs.sleep_path, fs.wait_signal, fs.wait_event, fs.wait_match,
             fs.wait_timeout_ms, fs.child_flow,
             -- A wait step's signal kept for its run (sent before it started).
             CASE WHEN fs.wait_signal IS NOT NULL THEN
               (SELECT g.data FROM flowreg.signals g
                WHERE g.run_id = r.id AND g.name = fs.wait_signal AND g.step_slug IS NULL) END
               AS signal_data,
             -- Skipped (migration 0027): a dependency skipped (trigger all), none completed
             -- (trigger any), or its condition false for its input.
             fs.checked AND (
               CASE WHEN cardinality(fs.deps) = 0 THEN false
                    WHEN fs.trigger_any THEN dq.completed = 0
                    ELSE dq.skipped > 0 END
               OR (fs.when_cond IS NOT NULL AND NOT flowreg._when(
                     fs.when_cond, CASE WHEN cardinality(fs.deps) = 0 THEN r.input
                                        ELSE coalesce(dq.outputs, '{}'::jsonb) END))) AS skip
      -- Driven by the run ids (primary key probes, materialized first), whatever the statistics
      -- say: each run's step states, then each step, by key in lateral subqueries (as joins, a
      -- plan made while the tables were small probed flow_steps by flow version, then walked
      -- all of step_states_pkey for each step).
      FROM rr AS r
      CROSS JOIN LATERAL (SELECT s.step_slug FROM flowreg.step_states s
                          WHERE s.run_id = r.id AND s.status = 'created'
                            AND s.remaining_deps = 0 OFFSET 0) s
      CROSS JOIN LATERAL (SELECT f.kind, f.timeout_ms, f.deps, f.priority, f.gate_prefix,
                                 f.gate_path, f.sleep_ms, f.sleep_path, f.wait_signal,
                                 f.wait_event, f.wait_match, f.wait_timeout_ms, f.when_cond,
                                 f.trigger_any, f.checked, f.child_flow
                          FROM flowreg.flow_steps f
                          WHERE f.flow_slug = r.flow_slug AND f.version = r.flow_version
                            AND f.step_slug = s.step_slug OFFSET 0) fs
      -- A step that may be skipped: its dependencies' states, and their outputs by slug.
      CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE d.status = 'completed') AS completed,
                                 count(*) FILTER (WHERE d.status = 'skipped') AS skipped,
                                 jsonb_object_agg(d.step_slug, d.output)
                                   FILTER (WHERE d.status = 'completed') AS outputs
                          FROM flowreg.step_states d
                          WHERE fs.checked AND d.run_id = r.id AND d.step_slug = ANY (fs.deps)) dq
    ),
    sized AS MATERIALIZED (
      SELECT w.*,
             CASE WHEN w.skip THEN 0
                  WHEN kind = 'sleep' THEN CASE WHEN w.wake IS NULL THEN -1 ELSE 1 END
                  WHEN kind = 'wait' THEN
                    CASE WHEN w.signal_data IS NOT NULL THEN 0
                         WHEN w.wait_event IS NOT NULL AND w.match_key IS NULL THEN -1
                         ELSE 1 END
                  WHEN kind NOT IN ('map', 'flow_map') THEN 1
                  WHEN jsonb_typeof(input) <> 'array' THEN -1
                  -- A map over a child flow starts at most 1000 runs (Child::kMaxRuns).
                  WHEN kind = 'flow_map' AND jsonb_array_length(input) > 1000 THEN -2
                  ELSE jsonb_array_length(input) END AS n
      FROM (SELECT ready.*,
                   -- A sleep step's end (NULL: no RFC 3339 time where it reads one).
                   -- A wait step's timeout (NULL: none, it has no task).
                   CASE WHEN kind = 'wait' THEN now() + wait_timeout_ms * interval '1 ms'
                        WHEN kind <> 'sleep' THEN NULL
                        WHEN sleep_ms IS NOT NULL THEN now() + sleep_ms * interval '1 ms'
                        ELSE flowreg._rfc3339(input #>> sleep_path) END AS wake,
                   -- A wait step's on an event: the key it waits under (NULL: a value missing).
                   CASE WHEN wait_event IS NOT NULL
                        THEN flowreg._match_key(wait_match, input, 'run') END AS match_key
            FROM ready) w
    ),
    -- Within a work() call, the first `take` tasks of each step (in element order) are created
    -- claimed by its worker, step after step until its room is used up; none for a flow it does
    -- not serve, or outside a work() call, or with a gate (its tasks wait for _claim_gated).
    -- Decided per step (few rows), not per element.
    offered AS (
      SELECT z.*, z.n > 0 AND z.gate IS NULL
                  AND z.kind NOT IN ('sleep', 'wait', 'flow', 'flow_map')
                  AND coalesce(v_claim->'flows' ? (z.flow_slug || ' ' || z.flow_version),
                               false) AS served
      FROM sized z
    ),
    shared AS (
      SELECT v.*,
             CASE WHEN v.served THEN
               least(v.n, greatest(0, (v_claim->>'left')::int - coalesce(
                 sum(CASE WHEN v.served THEN v.n ELSE 0 END)
                   OVER (ORDER BY v.run_id, v.step_slug
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)))
             ELSE 0 END AS take
      FROM offered v
    ),
    elems AS (
      SELECT z.run_id, z.step_slug, (e.i - 1)::int AS task_index, z.flow_slug, z.flow_version,
             -- A map step's task keeps its element; a single step's reads its input when claimed.
             CASE WHEN z.kind = 'map' THEN e.elem END AS input,
             z.timeout_ms, z.priority, z.gate, e.i <= z.take AS mine, z.wake
      FROM shared z
      CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN z.kind = 'map' THEN z.input ELSE jsonb_build_array(z.input) END)
        WITH ORDINALITY AS e(elem, i)
      WHERE z.n > 0 AND NOT (z.kind = 'wait' AND z.wake IS NULL)
        AND z.kind NOT IN ('flow', 'flow_map')  -- their tasks come from their children's ends
    ),
    new_tasks AS (
      INSERT INTO flowreg.tasks (run_id, step_slug, task_index, flow_slug, flow_version, input,
                                 timeout_ms, priority, gate, status, attempt, worker_id,
                                 started_at, lease_expires_at, available_at)
      SELECT k.run_id, k.step_slug, k.task_index, k.flow_slug, k.flow_version, k.input,
             k.timeout_ms, k.priority, k.gate,
             CASE WHEN k.mine THEN 'started' ELSE 'queued' END, CASE WHEN k.mine THEN 1 ELSE 0 END,
             CASE WHEN k.mine THEN v_claim->>'worker' END, CASE WHEN k.mine THEN now() END,
             CASE WHEN k.mine
                  THEN flowreg._lease_end(k.timeout_ms, (v_claim->>'lease_ms')::bigint) END,
             coalesce(k.wake, now())
      FROM elems k
      RETURNING id, flow_slug, status
    ),
    upd AS (
      UPDATE flowreg.step_states s
      SET status = CASE WHEN z.skip THEN 'skipped' WHEN z.n > 0 THEN 'started'
                        WHEN z.n = 0 THEN 'completed' ELSE 'failed' END,
          remaining_tasks = greatest(z.n, 0),
          task_count = greatest(z.n, 0),
          started_at = now(),
          finished_at = CASE WHEN z.n <= 0 THEN now() END,
          output = CASE WHEN z.n = 0 AND NOT z.skip THEN coalesce(z.signal_data, '[]'::jsonb) END,
          error = CASE WHEN z.n < 0 AND z.kind = 'wait' THEN
            format('step %L waits for event %L where %s, but its input has nothing at %s',
                   z.step_slug, z.wait_event,
                   (SELECT string_agg(format('%s = the value at %s of its input', m->>'at',
                                             m->>'from'), ' and ')
                    FROM jsonb_array_elements(z.wait_match) m),
                   (SELECT string_agg(m->>'from', ', ') FROM jsonb_array_elements(z.wait_match) m
                    WHERE z.input #> ARRAY(SELECT jsonb_array_elements_text(m->'run')) IS NULL))
                       WHEN z.n < 0 AND z.kind = 'sleep' THEN
            format('step %L sleeps until the time at %L of its input, but %s there, not an RFC '
                   '3339 time such as "2026-11-28T09:00:00Z"', z.step_slug,
                   -- The pointer as written: each key escaped again (~ as ~0, / as ~1).
                   (SELECT coalesce(string_agg('/' || replace(replace(k, '~', '~0'), '/', '~1'),
                                               '' ORDER BY i), '')
                    FROM unnest(z.sleep_path) WITH ORDINALITY AS p(k, i)),
                   CASE WHEN z.input #> z.sleep_path IS NULL THEN 'it has nothing'
                        ELSE 'it has ' || left((z.input #> z.sleep_path)::text, 100) END)
                       WHEN z.n = -2 THEN
            format('step %L starts a run of flow %L per element of its input, at most 1000, but '
                   'its input has %s elements', z.step_slug, z.child_flow,
                   jsonb_array_length(z.input))
                       WHEN z.n < 0 THEN
            format('step %L is a map step but its input is %s, not an array', z.step_slug,
                   CASE jsonb_typeof(z.input) WHEN 'object' THEN 'an object' WHEN 'null' THEN 'null'
                        WHEN 'array' THEN 'an array' ELSE 'a ' || jsonb_typeof(z.input) END) END
      FROM sized z
      WHERE s.run_id = ANY (ARRAY[z.run_id]) AND s.step_slug = ANY (ARRAY[z.step_slug])
      RETURNING s.run_id, s.step_slug, s.status, s.error, z.flow_slug, z.flow_version, z.kind,
                z.child_flow, z.input
    ),
    -- A wait step on an event starts to wait under its key, with the values it waits for (shown).
    waits AS (
      INSERT INTO flowreg.event_waits (run_id, step_slug, event, match_key, match)
      SELECT z.run_id, z.step_slug, z.wait_event, z.match_key,
             coalesce((SELECT jsonb_object_agg(m->>'at',
                                               z.input #> ARRAY(SELECT jsonb_array_elements_text(
                                                                  m->'run')))
                       FROM jsonb_array_elements(z.wait_match) m), '{}'::jsonb)
      FROM sized z WHERE z.kind = 'wait' AND z.wait_event IS NOT NULL AND z.n > 0
      ON CONFLICT (run_id, step_slug) DO UPDATE
        SET event = excluded.event, match_key = excluded.match_key, match = excluded.match,
            since = now()
    ),
    -- A wait step that found its signal kept consumes it.
    took AS (
      UPDATE flowreg.signals g SET step_slug = z.step_slug, consumed_at = now()
      FROM sized z
      WHERE z.kind = 'wait' AND z.n = 0 AND NOT z.skip AND g.run_id = ANY (ARRAY[z.run_id])
        AND g.name = z.wait_signal AND g.step_slug IS NULL
    )
    SELECT array_agg(u.run_id) FILTER (WHERE u.status IN ('completed', 'skipped')),
           array_agg(u.step_slug) FILTER (WHERE u.status IN ('completed', 'skipped')),
           array_agg(u.flow_slug) FILTER (WHERE u.status IN ('completed', 'skipped')),
           array_agg(u.flow_version) FILTER (WHERE u.status IN ('completed', 'skipped')),
           array_agg(u.run_id) FILTER (WHERE u.status = 'failed'),
           array_agg(u.error) FILTER (WHERE u.status = 'failed'),
           (SELECT array_agg(DISTINCT t.flow_slug) FROM new_tasks t WHERE t.status = 'queued'),
           (SELECT array_agg(t.id) FROM new_tasks t WHERE t.status = 'started'),
           array_agg(u.run_id) FILTER (WHERE u.child_flow IS NOT NULL AND u.status = 'started'),
           array_agg(u.step_slug) FILTER (WHERE u.child_flow IS NOT NULL AND u.status = 'started'),
           array_agg(u.child_flow) FILTER (WHERE u.child_flow IS NOT NULL AND u.status = 'started'),
           array_agg(u.kind) FILTER (WHERE u.child_flow IS NOT NULL AND u.status = 'started'),
           array_agg(u.input) FILTER (WHERE u.child_flow IS NOT NULL AND u.status = 'started')
    INTO v_done_runs, v_done_steps, v_done_flows, v_done_versions, v_fail_runs, v_fail_errors,
         v_flows, v_mine, v_child_runs, v_child_steps, v_child_flows, v_child_kinds,
         v_child_inputs
    FROM upd u;
    PERFORM flowreg._claimed_here(v_claim, v_mine);

    IF v_flows IS NOT NULL THEN
      PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
    END IF;
    IF v_fail_runs IS NOT NULL THEN
      PERFORM flowreg._fail_runs(v_fail_runs, v_fail_errors);
    END IF;
    IF v_child_runs IS NOT NULL THEN
      PERFORM flowreg._start_children(v_child_runs, v_child_steps, v_child_flows, v_child_kinds,
                                      v_child_inputs);
    END IF;
    EXIT WHEN v_done_runs IS NULL;
    PERFORM flowreg._account_steps(v_done_runs, v_done_steps, v_done_flows, v_done_versions);
  END LOOP;

  -- Runs without remaining leaf steps are complete: their output is their leaf steps' outputs.
  -- The runs are probed by id (`id = ANY`: as a join with the ids, a plan made while runs was
  -- small walked all of runs_pkey), each step by key.
  WITH done AS (
    UPDATE flowreg.runs r
    SET status = 'completed', finished_at = now(),
        output = coalesce(
          (SELECT jsonb_object_agg(s.step_slug, s.output)
           FROM flowreg.step_states s
           CROSS JOIN LATERAL (SELECT f.is_leaf FROM flowreg.flow_steps f
                               WHERE f.flow_slug = r.flow_slug AND f.version = r.flow_version
                                 AND f.step_slug = s.step_slug OFFSET 0) fs
           WHERE s.run_id = r.id AND s.status = 'completed' AND fs.is_leaf), '{}'::jsonb)
    WHERE r.id = ANY (p_runs) AND r.status = 'started' AND r.remaining_leaves = 0
    RETURNING r.id
  )
  SELECT count(pg_notify('flowreg_runs', id::text || ' completed')) INTO v_n FROM done;
END $$;

ALTER FUNCTION flowreg._start_steps(uuid[])
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
