-- Accounts for completed steps: their dependents have one dependency less; a completed leaf step
-- (one no step depends on) leaves its run one leaf less, and a run without leaves left is
-- completed (its output: its leaf steps' outputs) and announced, in the same UPDATE that
-- decrements it. (Every step is an ancestor of a leaf, which cannot complete before it: a run whose
-- leaves completed has no step left. So only a leaf's completion writes its run.) A single step
-- left without dependencies is
-- started in that same UPDATE of its state, and its task created (its input is read when it is
-- claimed): a chain's next step costs one write of its state and one task. Returns the runs given
-- that are still started and have a map step made ready (its tasks depend on its input's length:
-- _start_steps creates them). REQUIRES: the runs are locked and started, and the steps' outputs
-- are stored.
--
-- Cost per step flat in the number given, plans stable by construction (see _complete_locked):
-- the counts are jsonb objects keyed by run id (and step slug), and each UPDATE reads one table
-- through its primary key with `= ANY (array)`. A run's flow version, and whether a step is a
-- leaf, are read by lateral primary-key probes per step given, which the planner cannot turn into
-- scans.
CREATE OR REPLACE FUNCTION flowreg._account_steps(p_runs uuid[], p_steps text[])
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
  v_runs uuid[];
  v_left jsonb;   -- run id -> leaf steps completed
  v_deps jsonb;   -- run id || dependent step slug -> dependencies completed
  v_flow jsonb;   -- run id -> [flow slug, flow version]
  v_druns uuid[];
  v_map_runs uuid[];
  v_flows text[];
  v_done uuid[];
BEGIN
  WITH d AS (
    SELECT x.run_id, x.step_slug, r.flow_slug, r.flow_version, l.is_leaf
    FROM unnest(p_runs, p_steps) AS x(run_id, step_slug)
    CROSS JOIN LATERAL (SELECT q.flow_slug, q.flow_version FROM flowreg.runs q
                        WHERE q.id = x.run_id OFFSET 0) r
    CROSS JOIN LATERAL (SELECT fs.is_leaf FROM flowreg.flow_steps fs
                        WHERE fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
                          AND fs.step_slug = x.step_slug OFFSET 0) l
  ),
  per_run AS (SELECT d.run_id, count(*)::int AS n FROM d WHERE d.is_leaf GROUP BY 1),
  per_dep AS (
    SELECT d.run_id, fd.step_slug, count(*)::int AS n
    FROM d JOIN flowreg.flow_deps fd ON fd.flow_slug = d.flow_slug AND fd.version = d.flow_version
                                    AND fd.dep_slug = d.step_slug
    GROUP BY 1, 2
  )
  SELECT (SELECT array_agg(run_id) FROM per_run),
         (SELECT jsonb_object_agg(run_id::text, n) FROM per_run),
         (SELECT jsonb_object_agg(run_id::text || step_slug, n) FROM per_dep),
         (SELECT array_agg(DISTINCT run_id) FROM per_dep),
         (SELECT jsonb_object_agg(x.run_id::text, jsonb_build_array(x.flow_slug, x.flow_version))
          FROM (SELECT DISTINCT d.run_id, d.flow_slug, d.flow_version FROM d) x)
  INTO v_runs, v_left, v_deps, v_druns, v_flow;

  IF v_druns IS NOT NULL THEN
    -- go: a single step left without dependencies, started here.
    WITH upd AS (
      UPDATE flowreg.step_states s
      SET remaining_deps = s.remaining_deps - (v_deps ->> (s.run_id::text || s.step_slug))::int,
          status = CASE WHEN s.kind = 'single' AND s.status = 'created'
                             AND s.remaining_deps
                                 = (v_deps ->> (s.run_id::text || s.step_slug))::int
                        THEN 'started' ELSE s.status END,
          remaining_tasks = CASE WHEN s.kind = 'single' AND s.status = 'created'
                                      AND s.remaining_deps
                                          = (v_deps ->> (s.run_id::text || s.step_slug))::int
                                 THEN 1 ELSE s.remaining_tasks END,
          task_count = CASE WHEN s.kind = 'single' AND s.status = 'created'
                                 AND s.remaining_deps
                                     = (v_deps ->> (s.run_id::text || s.step_slug))::int
                            THEN 1 ELSE s.task_count END,
          started_at = CASE WHEN s.kind = 'single' AND s.status = 'created'
                                 AND s.remaining_deps
                                     = (v_deps ->> (s.run_id::text || s.step_slug))::int
                            THEN now() ELSE s.started_at END
      WHERE s.run_id = ANY (v_druns) AND v_deps ? (s.run_id::text || s.step_slug)
      RETURNING s.run_id, s.step_slug, s.kind, s.remaining_deps,
                s.kind = 'single' AND s.remaining_deps = 0 AND s.status = 'started' AS go
    ),
    started AS (
      INSERT INTO flowreg.tasks (run_id, step_slug, task_index, flow_slug, flow_version,
                                 max_attempts, base_delay_ms, max_delay_ms, timeout_ms)
      SELECT u.run_id, u.step_slug, 0, fs.flow_slug, fs.version, fs.max_attempts,
             fs.base_delay_ms, fs.max_delay_ms, fs.timeout_ms
      FROM upd u
      JOIN flowreg.flow_steps fs ON fs.flow_slug = v_flow -> u.run_id::text ->> 0
                                 AND fs.version = v_flow -> u.run_id::text ->> 1
                                 AND fs.step_slug = u.step_slug
      WHERE u.go
      RETURNING flow_slug
    )
    SELECT (SELECT array_agg(DISTINCT st.flow_slug) FROM started st),
           (SELECT array_agg(DISTINCT u.run_id) FROM upd u
            WHERE u.kind = 'map' AND u.remaining_deps = 0)
    INTO v_flows, v_map_runs;
    IF v_flows IS NOT NULL THEN
      PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
    END IF;
  END IF;

  IF v_runs IS NULL THEN
    RETURN coalesce(v_map_runs, '{}');
  END IF;
  WITH rs AS (
    UPDATE flowreg.runs r
    SET remaining_leaves = r.remaining_leaves - (v_left ->> r.id::text)::int,
        status = CASE WHEN r.remaining_leaves = (v_left ->> r.id::text)::int THEN 'completed'
                      ELSE r.status END,
        finished_at = CASE WHEN r.remaining_leaves = (v_left ->> r.id::text)::int THEN now()
                           ELSE r.finished_at END,
        output = CASE WHEN r.remaining_leaves <> (v_left ->> r.id::text)::int THEN r.output
                      ELSE coalesce(
                        (SELECT jsonb_object_agg(s.step_slug, s.output)
                         FROM flowreg.step_states s
                         JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug
                                                    AND fs.version = r.flow_version
                                                    AND fs.step_slug = s.step_slug
                         WHERE s.run_id = r.id AND fs.is_leaf), '{}'::jsonb) END
    WHERE r.id = ANY (v_runs) AND r.status = 'started'
    RETURNING r.id, r.status
  )
  SELECT array_agg(rs.id) FILTER (WHERE rs.status = 'completed') INTO v_done FROM rs;
  IF v_done IS NOT NULL THEN
    PERFORM pg_notify('flowreg_runs', id::text || ' completed') FROM unnest(v_done) AS id;
  END IF;
  -- A run with a map step made ready has a step left, so it is still started.
  RETURN coalesce(v_map_runs, '{}');
END $$;

ALTER FUNCTION flowreg._account_steps(uuid[], text[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
