-- One worker cycle in one transaction (one commit, one WAL flush): records completions
-- ([{"id", "attempt", "output"}]) and failures ([{"id", "attempt", "error", "permanent"}]), then
-- claims up to p_limit tasks as _claim does. The tasks of the steps the completions make ready, of
-- the flows given, come first: they are created claimed by p_worker (up to p_limit; the rest are
-- queued), so a chain's next step is one insert, and its run goes on with the worker that ran its
-- previous step rather than waiting behind the queue.
-- Rows:
--   kind 'rejected'  id: a completion or failure not recorded (attempt no longer current, or the
--                    task no longer started)
--   kind 'claimed'   a claimed task, every column set
--   kind 'due'       at most one: due_in_ms, the milliseconds until the next delayed (retrying)
--                    task of these flows becomes available, or a rate-limited gate visited has
--                    tokens again (_claim_gated), by the server's clock (so the
--                    worker's clock does not matter). timeout_ms holds the same number and
--                    lease_expires_at that time, as they did before due_in_ms existed: workers
--                    of the previous release, still running while a database is upgraded, read
--                    them. None when the call claimed p_limit tasks: a worker whose claim is
--                    full claims again at once (LoopLanes; so did the previous release's)
CREATE OR REPLACE FUNCTION flowreg.work(p_worker text, p_completions jsonb, p_failures jsonb,
                                        p_flows jsonb, p_limit int, p_lease_ms bigint)
RETURNS TABLE (kind text, id bigint, run_id uuid, flow_slug text, flow_version text,
               step_slug text, task_index int, attempt int, input jsonb, max_attempts int,
               timeout_ms bigint, lease_expires_at timestamptz, due_in_ms bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_rejected bigint[] := '{}';
  v_ids bigint[];
  v_acc bigint[];
  -- The tasks of a chain's next steps created claimed by this call (see _complete_locked), with
  -- every column _claim would return.
  v_ids_c bigint[];
  v_runs_c uuid[];
  v_flows_c text[];
  v_versions_c text[];
  v_steps_c text[];
  v_inputs_c jsonb[];
  v_attempts_c int[];
  v_timeouts_c bigint[];
  v_leases_c timestamptz[];
  v_taken bigint;  -- tasks claimed by this call (returned as 'claimed')
  v_set text;      -- set_config's value, unused
  v_rate_due timestamptz;  -- when a rate-limited gate has tokens again (_claim_gated)
BEGIN
  -- Each statement costs its plan's initialization (executor start-up) even with no rows to work
  -- on, and a call's fixed cost is the sum of those: a statement runs only when it has rows, and
  -- what can be one is a simple expression (an assignment, which PL/pgSQL evaluates without the
  -- executor; PERFORM runs a query).
  IF coalesce(jsonb_array_length(p_completions), 0) = 0
     AND coalesce(jsonb_array_length(p_failures), 0) = 0 THEN
    -- Nothing to record: a claim alone does not wait for its WAL flush (the first commit of a
    -- run's work is then its completion's). Should the server crash before the flush, the claim
    -- is lost and the task is queued again; its worker's completion is then rejected (or accepted
    -- in place of a later claimer's, fenced by attempt): a result is never lost or recorded twice.
    v_set := set_config('synchronous_commit', 'off', true);
  ELSE
    SELECT array_agg((e->>'id')::bigint) INTO v_ids
    FROM (SELECT e FROM jsonb_array_elements(coalesce(p_completions, '[]')) e
          UNION ALL SELECT e FROM jsonb_array_elements(coalesce(p_failures, '[]')) e) x;
  END IF;
  -- One lock order (see README): the runs of every task given (completed or failed) that is not
  -- solo are locked together, by id, before any task or step state is written; with failures,
  -- the solo tasks and then their runs too. Completions alone lock a solo task and its run by
  -- writing them (_complete_locked deletes the task, then completes its run).
  IF v_ids IS NOT NULL THEN
    IF p_limit > 0 AND jsonb_array_length(coalesce(p_completions, '[]')) > 0 THEN
      -- The tasks the completions make ready, of the flows given, are created claimed by this
      -- worker (up to p_limit): a chain's next step costs one insert, not an insert, its lock
      -- and its update (_account_steps, _start_steps, _claimed_here; _claim returns them).
      -- The flows' keys ('<slug> <version>') are kept for the session (settings
      -- flowreg.claim_flows, made from flowreg.claim_flows_of): a worker asks for the same flows
      -- call after call.
      IF current_setting('flowreg.claim_flows_of', true) IS DISTINCT FROM p_flows::text THEN
        v_set := set_config('flowreg.claim_flows',
                            coalesce((SELECT jsonb_agg(f.slug || ' ' || f.version)
                                      FROM jsonb_to_recordset(p_flows)
                                           AS f(slug text, version text)), 'null')::text,
                            false);
        v_set := set_config('flowreg.claim_flows_of', p_flows::text, false);
      END IF;
      v_set := set_config('flowreg.claim', jsonb_build_object(
                 'worker', p_worker, 'lease_ms', p_lease_ms, 'left', p_limit,
                 'flows', nullif(current_setting('flowreg.claim_flows', true), '')::jsonb)::text,
               true);
    END IF;
    IF coalesce(jsonb_array_length(p_failures), 0) = 0 THEN
      PERFORM flowreg._lock_step_runs_of(v_ids);
    ELSE
      PERFORM flowreg._lock_runs_of(v_ids);
    END IF;
    v_acc := '{}';
    IF jsonb_array_length(coalesce(p_completions, '[]')) > 0 THEN
      SELECT * INTO v_acc, v_ids_c, v_runs_c, v_flows_c, v_versions_c, v_steps_c, v_inputs_c,
                    v_attempts_c, v_timeouts_c, v_leases_c
      FROM flowreg._complete_locked(p_completions);
    END IF;
    IF jsonb_array_length(coalesce(p_failures, '[]')) > 0 THEN
      v_acc := v_acc || flowreg._fail_locked(p_failures);
    END IF;
    IF cardinality(v_acc) < cardinality(v_ids) THEN
      v_rejected := flowreg._rejected(v_ids, v_acc);
    END IF;
    v_set := set_config('flowreg.claim', '', true);
  END IF;

  IF cardinality(v_rejected) > 0 THEN
    RETURN QUERY SELECT 'rejected'::text, r, NULL::uuid, NULL::text, NULL::text, NULL::text,
                        NULL::int, NULL::int, NULL::jsonb, NULL::int, NULL::bigint,
                        NULL::timestamptz, NULL::bigint
                 FROM unnest(v_rejected) AS r;
  END IF;
  IF v_ids_c IS NOT NULL THEN
    RETURN QUERY SELECT 'claimed'::text, c.id, c.run_id, c.flow_slug, c.flow_version,
                        c.step_slug, 0, 1, c.input, c.max_attempts, c.timeout_ms,
                        c.lease_expires_at, NULL::bigint
                 FROM unnest(v_ids_c, v_runs_c, v_flows_c, v_versions_c, v_steps_c, v_inputs_c,
                             v_attempts_c, v_timeouts_c, v_leases_c)
                      AS c(id, run_id, flow_slug, flow_version, step_slug, input, max_attempts,
                           timeout_ms, lease_expires_at);
  END IF;
  RETURN QUERY SELECT 'claimed'::text, c.*, NULL::bigint
               FROM flowreg._claim(p_worker, p_flows, p_limit, p_lease_ms,
                                   coalesce(cardinality(v_ids_c), 0)) c;
  GET DIAGNOSTICS v_taken = ROW_COUNT;
  -- A call that took all it asked for does not look for the next delayed task: its worker claims
  -- again at once (LoopLanes: a full claim), and a later call tells the time.
  IF p_limit > 0 AND coalesce(cardinality(v_ids_c), 0) + v_taken >= p_limit THEN
    RETURN;
  END IF;
  v_rate_due := nullif(current_setting('flowreg.rate_due', true), '')::timestamptz;
  RETURN QUERY
    SELECT 'due'::text, NULL::bigint, NULL::uuid, NULL::text, NULL::text, NULL::text, NULL::int,
           NULL::int, NULL::jsonb, NULL::int,
           ceil(extract(epoch FROM least(min(d.at), v_rate_due) - now()) * 1000)::bigint,
           least(min(d.at), v_rate_due),
           ceil(extract(epoch FROM least(min(d.at), v_rate_due) - now()) * 1000)::bigint
    FROM jsonb_to_recordset(p_flows) AS f(slug text, version text)
    -- Per priority level (see _claim), the level's first task not yet due.
    CROSS JOIN LATERAL unnest(ARRAY(SELECT l.priority FROM flowreg.queue_levels l
                                    WHERE l.flow_slug = f.slug AND l.flow_version = f.version
                                    UNION SELECT 0)) AS lv(priority)
    CROSS JOIN LATERAL (
      SELECT q.available_at AS at FROM flowreg.tasks q
      WHERE q.status = 'queued'
        AND hashtextextended(q.flow_slug || ' ' || q.flow_version, 0)
            = hashtextextended(f.slug || ' ' || f.version, 0)  -- tasks_queued (migration 0022)
        AND q.priority = lv.priority AND q.gate IS NULL
        AND q.flow_slug = f.slug AND q.flow_version = f.version
        AND q.available_at > now()
      ORDER BY q.available_at LIMIT 1) d
    HAVING least(min(d.at), v_rate_due) IS NOT NULL;
END $$;

-- Sequential scans off, as in every function it calls: its own query of tasks (the next delayed
-- task) walks tasks_queued even when its plan is made while tasks is small and analyzed so
-- (tests/pg/hot_path_test.cpp, plans made on small tables). Bitmap scans off too, as in _claim:
-- that query stops at its first row in available_at order, which a bitmap scan cannot give.
ALTER FUNCTION flowreg.work(text, jsonb, jsonb, jsonb, int, bigint)
  SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
