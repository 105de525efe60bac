-- Accounts for completed steps: their dependents have one dependency less, their runs one step
-- less, and a run without steps left is completed (its output: its leaf steps' outputs) and
-- announced, in the same UPDATE that decrements it. Returns the runs given that are still started,
-- the ones where more steps may be ready. REQUIRES: the runs are locked, and the steps' outputs
-- are stored. One generic plan per session walking primary keys (see _claim).
CREATE OR REPLACE FUNCTION flowreg._account_steps(p_runs uuid[], p_steps text[])
RETURNS uuid[] LANGUAGE plpgsql AS $$
DECLARE
  v_going uuid[];
  v_done uuid[];
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
    UPDATE flowreg.runs r
    SET remaining_steps = r.remaining_steps - x.n,
        status = CASE WHEN r.remaining_steps = x.n THEN 'completed' ELSE r.status END,
        finished_at = CASE WHEN r.remaining_steps = x.n THEN now() ELSE r.finished_at END,
        output = CASE WHEN r.remaining_steps <> x.n THEN r.output
                      ELSE coalesce(
                        (SELECT jsonb_object_agg(s.step_slug, s.output)
                         FROM flowreg.step_states s
                         JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug
                                                    AND fs.version = r.flow_version
                                                    AND fs.step_slug = s.step_slug
                         WHERE s.run_id = r.id AND fs.is_leaf), '{}'::jsonb) END
    FROM (SELECT run_id, count(*)::int AS n FROM d GROUP BY 1) x
    WHERE r.id = ANY (p_runs) AND r.id = x.run_id AND r.status = 'started'
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
