-- Accounts for completed steps: their dependents have one dependency less, their runs one step
-- less, and a run without steps left is completed (its output: its leaf steps' outputs) and
-- announced, in the same UPDATE that decrements it. Returns the runs given that are still started,
-- the ones where more steps may be ready. REQUIRES: the runs are locked, and the steps' outputs
-- are stored.
--
-- Cost per step flat in the number given, plans stable by construction (see _complete_locked):
-- the counts are jsonb objects keyed by run id (and step slug), and each UPDATE reads one table
-- through its primary key with `= ANY (array)`. A run's flow version is read by a lateral
-- primary-key probe per step given, which the planner cannot turn into a scan of runs.
CREATE OR REPLACE FUNCTION flowreg._account_steps(p_runs uuid[], p_steps text[])
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
  v_runs uuid[];
  v_left jsonb;   -- run id -> steps completed
  v_deps jsonb;   -- run id || dependent step slug -> dependencies completed
  v_druns uuid[];
  v_going uuid[];
  v_done uuid[];
BEGIN
  WITH d AS (
    SELECT x.run_id, x.step_slug, r.flow_slug, r.flow_version
    FROM unnest(p_runs, p_steps) AS x(run_id, step_slug)
    CROSS JOIN LATERAL (SELECT q.flow_slug, q.flow_version FROM flowreg.runs q
                        WHERE q.id = x.run_id OFFSET 0) r
  ),
  per_run AS (SELECT d.run_id, count(*)::int AS n FROM d GROUP BY 1),
  per_dep AS (
    SELECT d.run_id, fd.step_slug, count(*)::int AS n
    FROM d JOIN flowreg.flow_deps fd ON fd.flow_slug = d.flow_slug AND fd.version = d.flow_version
                                    AND fd.dep_slug = d.step_slug
    GROUP BY 1, 2
  )
  SELECT (SELECT array_agg(run_id) FROM per_run),
         (SELECT jsonb_object_agg(run_id::text, n) FROM per_run),
         (SELECT jsonb_object_agg(run_id::text || step_slug, n) FROM per_dep),
         (SELECT array_agg(DISTINCT run_id) FROM per_dep)
  INTO v_runs, v_left, v_deps, v_druns;
  IF v_runs IS NULL THEN
    RETURN '{}';
  END IF;

  IF v_druns IS NOT NULL THEN
    UPDATE flowreg.step_states s
    SET remaining_deps = s.remaining_deps - (v_deps ->> (s.run_id::text || s.step_slug))::int
    WHERE s.run_id = ANY (v_druns) AND v_deps ? (s.run_id::text || s.step_slug);
  END IF;

  WITH rs AS (
    UPDATE flowreg.runs r
    SET remaining_steps = r.remaining_steps - (v_left ->> r.id::text)::int,
        status = CASE WHEN r.remaining_steps = (v_left ->> r.id::text)::int THEN 'completed'
                      ELSE r.status END,
        finished_at = CASE WHEN r.remaining_steps = (v_left ->> r.id::text)::int THEN now()
                           ELSE r.finished_at END,
        output = CASE WHEN r.remaining_steps <> (v_left ->> r.id::text)::int THEN r.output
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
  SELECT array_agg(rs.id) FILTER (WHERE rs.status = 'started'),
         array_agg(rs.id) FILTER (WHERE rs.status = 'completed')
  INTO v_going, v_done
  FROM rs;
  IF v_done IS NOT NULL THEN
    PERFORM pg_notify('flowreg_runs', id::text || ' completed') FROM unnest(v_done) AS id;
  END IF;
  RETURN coalesce(v_going, '{}');
END $$;

ALTER FUNCTION flowreg._account_steps(uuid[], text[])
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
