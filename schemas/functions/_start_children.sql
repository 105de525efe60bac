-- Starts the child runs of flow steps that have just started (migration 0028; _start_steps): for
-- each given step of each given run (still started), a run of flow p_flows[i] at its version
-- stored last (flows.created_at), with the step's input, or, kind flow_map, one per element of
-- its input array. One start_runs call per child flow, for every step given that starts it
-- (p_parents: the children's ids come after their parents', their parent_index is their
-- element's, 0 without map). Their parent runs are marked has_children. A run fails instead when
-- a step's flow is not stored, or when its child would be nested deeper than 8
-- (Child::kMaxDepth: a cycle of flows that start one another is stopped there). A child run that
-- ends at once (every step skipped, or failed at its start) hands its end back by the trigger
-- runs_ended (_run_ended), as any other. REQUIRES: the given runs are locked.
CREATE OR REPLACE FUNCTION flowreg._start_children(p_runs uuid[], p_steps text[], p_flows text[],
                                                   p_kinds text[], p_inputs jsonb[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_flow text;
  v_version text;
  v_fail_runs uuid[];
  v_fail_errors text[];
  v_inputs jsonb[];
  v_parents uuid[];
  v_steps text[];
  v_indexes int[];
  v_depths int[];
BEGIN
  -- The runs that fail: a flow not stored, or nested too deep (each run and flow by key).
  SELECT array_agg(x.run_id ORDER BY x.i),
         array_agg(CASE WHEN v.version IS NULL THEN
                     format('step %L starts a run of flow %L, which is not stored in this '
                            'database (no worker or server that has it registered has started)',
                            x.step, x.flow)
                   ELSE
                     format('step %L would start a run of flow %L nested %s deep: child runs '
                            'nest at most 8 deep (do flows start one another in a cycle?)',
                            x.step, x.flow, r.depth + 1) END ORDER BY x.i)
  INTO v_fail_runs, v_fail_errors
  FROM unnest(p_runs, p_steps, p_flows) WITH ORDINALITY AS x(run_id, step, flow, i)
  CROSS JOIN LATERAL (SELECT coalesce(q.depth, 0) AS depth FROM flowreg.runs q
                      WHERE q.id = x.run_id AND q.status = 'started' OFFSET 0) r
  LEFT JOIN LATERAL (SELECT f.version FROM flowreg.flows f WHERE f.slug = x.flow
                     ORDER BY f.created_at DESC, f.version LIMIT 1) v ON true
  WHERE v.version IS NULL OR r.depth + 1 > 8;
  IF v_fail_runs IS NOT NULL THEN
    PERFORM flowreg._fail_runs(v_fail_runs, v_fail_errors);
  END IF;

  FOR v_flow IN SELECT DISTINCT f FROM unnest(p_flows) AS f ORDER BY 1 LOOP
    SELECT f.version INTO v_version FROM flowreg.flows f
    WHERE f.slug = v_flow ORDER BY f.created_at DESC, f.version LIMIT 1;
    CONTINUE WHEN v_version IS NULL;
    -- Its children, in step and element order: one per step, or one per element (flow_map).
    WITH s AS (
      SELECT x.run_id, x.step, x.kind, x.input, x.i, r.depth
      FROM unnest(p_runs, p_steps, p_flows, p_kinds, p_inputs) WITH ORDINALITY
        AS x(run_id, step, flow, kind, input, i)
      CROSS JOIN LATERAL (SELECT coalesce(q.depth, 0) AS depth FROM flowreg.runs q
                          WHERE q.id = x.run_id AND q.status = 'started' OFFSET 0) r
      WHERE x.flow = v_flow
    ),
    c AS (
      SELECT s.run_id, s.step, s.depth, s.i, 0 AS k, s.input FROM s WHERE s.kind = 'flow'
      UNION ALL
      SELECT s.run_id, s.step, s.depth, s.i, (e.k - 1)::int, e.elem
      FROM s CROSS JOIN LATERAL jsonb_array_elements(s.input) WITH ORDINALITY AS e(elem, k)
      WHERE s.kind = 'flow_map'
    )
    SELECT array_agg(c.input ORDER BY c.i, c.k), array_agg(c.run_id ORDER BY c.i, c.k),
           array_agg(c.step ORDER BY c.i, c.k), array_agg(c.k ORDER BY c.i, c.k),
           array_agg(c.depth + 1 ORDER BY c.i, c.k)
    INTO v_inputs, v_parents, v_steps, v_indexes, v_depths
    FROM c;
    CONTINUE WHEN v_inputs IS NULL;
    UPDATE flowreg.runs r SET has_children = true
    WHERE r.id = ANY (v_parents) AND r.has_children IS NOT TRUE;
    PERFORM flowreg.start_runs(v_flow, v_version, v_inputs, NULL, NULL, v_parents, v_steps,
                               v_indexes, v_depths);
  END LOOP;
END $$;

ALTER FUNCTION flowreg._start_children(uuid[], text[], text[], text[], jsonb[])
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
