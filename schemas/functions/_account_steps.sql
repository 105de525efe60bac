-- Accounts for ended steps (completed, or skipped: migration 0027): their dependents have one
-- dependency less; an ended leaf step (one no step depends on) leaves its run one leaf less, and a
-- run without leaves left is completed (its output: its completed leaf steps' outputs; a skipped
-- leaf has none) and announced, in the same UPDATE that decrements it. (Every step is an ancestor
-- of a leaf, which cannot end before it: a run whose leaves ended has no step left. So only a
-- leaf's end writes its run.) A single step left without dependencies is started in that same
-- UPDATE of its state, and its task created (its input is read when it is claimed): a chain's
-- next step costs one write of its state and one task. Within a work() call (transaction setting
-- flowreg.claim, see work), that task is created claimed by the calling worker when it serves the
-- flow and has room left (_claimed_here; _claim returns it). Returns the runs given that are still
-- started and have a map step made ready (its tasks depend on its input's length: _start_steps
-- creates them), a sleep or wait step (its task is due when its sleep or timeout ends: migrations
-- 0025, 0026) or a step that may be skipped (flow_deps.checked, migration 0027: whether it starts
-- depends on its dependencies' states and its condition).
-- REQUIRES: the runs are locked and started, and the steps' outputs are stored.
--
-- Cost per step flat in the number given, plans stable by construction (see _complete_locked):
-- every statement is a nested loop driven by the steps given (or arrays made from them), probing
-- primary keys, through lateral subqueries (OFFSET 0) or `key = ANY (ARRAY[row.key])`, so no
-- statistics can give the planner another plan. The callers pass each step's flow version (they
-- have it at hand), so the run is not read to find it.
CREATE OR REPLACE FUNCTION flowreg._account_steps(p_runs uuid[], p_steps text[],
                                                  p_flow_slugs text[], p_flow_versions text[])
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
  -- Runs with leaf steps completed, and how many.
  v_lruns uuid[];
  v_ln int[];
  -- Dependents of the steps given: their run, slug, flow and dependencies completed.
  v_druns uuid[];
  v_dsteps text[];
  v_dflows text[];
  v_dversions text[];
  v_dn int[];
  v_dchecked boolean[];  -- the dependent may be skipped: _start_steps decides (migration 0027)
  -- The leaves of the flows of the leaf steps given, keyed '<flow slug> <version> <step slug>'
  -- (slugs hold no space): a completed run's output is theirs.
  v_leaves jsonb;
  v_map_runs uuid[];
  v_flows text[];
  v_done uuid[];
  -- The worker whose work() call this is, if any (see work): the tasks made ready here of the
  -- flows it serves are created already claimed by it, up to the claims it has left.
  v_claim jsonb := nullif(current_setting('flowreg.claim', true), '')::jsonb;
  v_mine bigint[];
BEGIN
  WITH d AS MATERIALIZED (
    SELECT x.run_id, x.step_slug, x.flow_slug, x.flow_version, l.is_leaf
    FROM unnest(p_runs, p_steps, p_flow_slugs, p_flow_versions)
         AS x(run_id, step_slug, flow_slug, flow_version)
    CROSS JOIN LATERAL (SELECT fs.is_leaf FROM flowreg.flow_steps fs
                        WHERE fs.flow_slug = x.flow_slug AND fs.version = x.flow_version
                          AND fs.step_slug = x.step_slug OFFSET 0) l
  ),
  per_run AS (SELECT d.run_id, count(*)::int AS n FROM d WHERE d.is_leaf GROUP BY 1),
  per_dep AS (
    SELECT d.run_id, fd.step_slug, min(d.flow_slug) AS flow_slug,
           min(d.flow_version) AS flow_version, count(*)::int AS n, bool_or(fd.checked) AS checked
    FROM d CROSS JOIN LATERAL (SELECT fd.step_slug, fd.checked FROM flowreg.flow_deps fd
                               WHERE fd.flow_slug = d.flow_slug AND fd.version = d.flow_version
                                 AND fd.dep_slug = d.step_slug OFFSET 0) fd
    GROUP BY 1, 2
  ),
  leaf_flows AS (SELECT DISTINCT d.flow_slug, d.flow_version FROM d WHERE d.is_leaf)
  SELECT lr.*, dp.*,
         (SELECT jsonb_object_agg(f.flow_slug || ' ' || f.flow_version || ' ' || lf.step_slug, true)
          FROM leaf_flows f
          CROSS JOIN LATERAL (SELECT fs.step_slug FROM flowreg.flow_steps fs
                              WHERE fs.flow_slug = f.flow_slug AND fs.version = f.flow_version
                                AND fs.is_leaf OFFSET 0) lf)
  INTO v_lruns, v_ln, v_druns, v_dsteps, v_dflows, v_dversions, v_dn, v_dchecked, v_leaves
  FROM (SELECT array_agg(run_id), array_agg(n) FROM per_run) lr,
       (SELECT array_agg(run_id), array_agg(step_slug), array_agg(flow_slug),
               array_agg(flow_version), array_agg(n), array_agg(checked) FROM per_dep) dp;

  IF v_druns IS NOT NULL THEN
    -- go: a single step left without dependencies, started here (one that may be skipped is
    -- left to _start_steps).
    WITH upd AS (
      UPDATE flowreg.step_states s
      SET remaining_deps = s.remaining_deps - p.n,
          status = CASE WHEN s.kind = 'single' AND NOT p.checked AND s.status = 'created'
                             AND s.remaining_deps = p.n
                        THEN 'started' ELSE s.status END,
          remaining_tasks = CASE WHEN s.kind = 'single' AND NOT p.checked AND s.status = 'created'
                                      AND s.remaining_deps = p.n
                                 THEN 1 ELSE s.remaining_tasks END,
          task_count = CASE WHEN s.kind = 'single' AND NOT p.checked AND s.status = 'created'
                                 AND s.remaining_deps = p.n
                            THEN 1 ELSE s.task_count END,
          started_at = CASE WHEN s.kind = 'single' AND NOT p.checked AND s.status = 'created'
                                 AND s.remaining_deps = p.n
                            THEN now() ELSE s.started_at END
      FROM unnest(v_druns, v_dsteps, v_dflows, v_dversions, v_dn, v_dchecked)
           AS p(run_id, step_slug, flow_slug, flow_version, n, checked)
      WHERE s.run_id = ANY (ARRAY[p.run_id]) AND s.step_slug = ANY (ARRAY[p.step_slug])
      RETURNING s.run_id, s.step_slug, s.kind, s.remaining_deps, p.flow_slug, p.flow_version,
                p.checked,
                s.kind = 'single' AND NOT p.checked AND s.remaining_deps = 0
                  AND s.status = 'started' AS go
    ),
    go AS (
      SELECT u.run_id, u.step_slug, fs.flow_slug, fs.version, fs.timeout_ms,
             -- The run's own priority, else the step's (migration 0022): its run, by primary key.
             coalesce((SELECT r.priority FROM flowreg.runs r WHERE r.id = u.run_id),
                      fs.priority) AS priority,
             -- Its gate (a concurrency limit, migration 0023), NULL for most: its run's input.
             CASE WHEN fs.gate_prefix IS NOT NULL
                  THEN flowreg._gate_of(fs.gate_prefix,
                                        (SELECT r.input FROM flowreg.runs r WHERE r.id = u.run_id),
                                        fs.gate_path) END AS gate,
             coalesce(v_claim->'flows' ? (fs.flow_slug || ' ' || fs.version), false) AS served
      FROM upd u
      JOIN flowreg.flow_steps fs ON fs.flow_slug = ANY (ARRAY[u.flow_slug])
                                 AND fs.version = ANY (ARRAY[u.flow_version])
                                 AND fs.step_slug = ANY (ARRAY[u.step_slug])
      WHERE u.go
    ),
    -- A gated task is never claimed here: it waits for _claim_gated.
    ranked AS (
      SELECT go.*, go.served AND go.gate IS NULL
                   AND row_number() OVER (PARTITION BY go.served AND go.gate IS NULL)
                       <= (v_claim->>'left')::int AS mine
      FROM go
    ),
    started AS (
      INSERT INTO flowreg.tasks (run_id, step_slug, task_index, flow_slug, flow_version,
                                 timeout_ms, priority, gate, status, attempt, worker_id,
                                 started_at, lease_expires_at)
      SELECT k.run_id, k.step_slug, 0, k.flow_slug, k.version, k.timeout_ms, k.priority, k.gate,
             CASE WHEN k.mine THEN 'started' ELSE 'queued' END, CASE WHEN k.mine THEN 1 ELSE 0 END,
             CASE WHEN k.mine THEN v_claim->>'worker' END, CASE WHEN k.mine THEN now() END,
             CASE WHEN k.mine
                  THEN flowreg._lease_end(k.timeout_ms, (v_claim->>'lease_ms')::bigint) END
      FROM ranked k
      RETURNING id, flow_slug, status
    )
    SELECT (SELECT array_agg(DISTINCT st.flow_slug) FROM started st WHERE st.status = 'queued'),
           (SELECT array_agg(st.id) FROM started st WHERE st.status = 'started'),
           (SELECT array_agg(DISTINCT u.run_id) FROM upd u
            WHERE (u.kind <> 'single' OR u.checked) AND u.remaining_deps = 0)
    INTO v_flows, v_mine, v_map_runs;
    PERFORM flowreg._claimed_here(v_claim, v_mine);
    IF v_flows IS NOT NULL THEN
      PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
    END IF;
  END IF;

  IF v_lruns IS NULL THEN
    RETURN coalesce(v_map_runs, '{}');
  END IF;
  WITH rs AS (
    UPDATE flowreg.runs r
    SET remaining_leaves = r.remaining_leaves - p.n,
        status = CASE WHEN r.remaining_leaves = p.n THEN 'completed' ELSE r.status END,
        finished_at = CASE WHEN r.remaining_leaves = p.n THEN now() ELSE r.finished_at END,
        output = CASE WHEN r.remaining_leaves <> p.n THEN r.output
                      ELSE coalesce(
                        (SELECT jsonb_object_agg(s.step_slug, s.output)
                         FROM flowreg.step_states s
                         WHERE s.run_id = r.id AND s.status = 'completed'
                           AND v_leaves ? (r.flow_slug || ' ' || r.flow_version || ' '
                                           || s.step_slug)), '{}'::jsonb) END
    FROM unnest(v_lruns, v_ln) AS p(id, n)
    WHERE r.id = ANY (ARRAY[p.id]) AND r.status = 'started'
    RETURNING r.id, r.status
  )
  SELECT array_agg(rs.id) FILTER (WHERE rs.status = 'completed') INTO v_done FROM rs;
  IF v_done IS NOT NULL THEN
    PERFORM pg_notify('flowreg_runs', id::text || ' completed') FROM unnest(v_done) AS id;
  END IF;
  -- A run with a map step made ready has a step left, so it is still started.
  RETURN coalesce(v_map_runs, '{}');
END $$;

ALTER FUNCTION flowreg._account_steps(uuid[], text[], text[], text[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
  SET enable_mergejoin = off SET jit = off;
