-- Starts the child runs of flow steps that have just started (migration 0028; _start_steps): for
-- each given step of each given run (still started), a run of flow p_flows[i] at its version
-- stored last (flows.created_at), with the step's input, or, kind flow_map, one per element of
-- its input array (start_runs with p_parent: the children's ids come after their parent's, their
-- parent_index is their element's). The parent run is marked has_children. A run fails instead
-- when its step's flow is not stored, or when its child would be nested deeper than 8
-- (Child::kMaxDepth: a cycle of flows that start one another is stopped there). A child run
-- that ends at once (every step skipped, or failed at its start) hands its end back by the
-- trigger runs_ended (_run_ended), as any other. REQUIRES: the given runs are locked.
CREATE OR REPLACE FUNCTION flowreg._start_children(p_runs uuid[], p_steps text[], p_flows text[],
                                                   p_kinds text[], p_inputs jsonb[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_parent record;
  v_version text;
  v_fail_runs uuid[] := '{}';
  v_fail_errors text[] := '{}';
BEGIN
  FOR i IN 1 .. cardinality(p_runs) LOOP
    SELECT r.id, r.status, coalesce(r.depth, 0) AS depth INTO v_parent
    FROM flowreg.runs r WHERE r.id = p_runs[i];
    CONTINUE WHEN v_parent.status IS DISTINCT FROM 'started' OR p_runs[i] = ANY (v_fail_runs);
    SELECT f.version INTO v_version FROM flowreg.flows f
    WHERE f.slug = p_flows[i] ORDER BY f.created_at DESC, f.version LIMIT 1;
    IF v_version IS NULL THEN
      v_fail_runs := v_fail_runs || p_runs[i];
      v_fail_errors := v_fail_errors || format(
        'step %L starts a run of flow %L, which is not stored in this database (no worker or '
        'server that has it registered has started)', p_steps[i], p_flows[i]);
      CONTINUE;
    END IF;
    IF v_parent.depth + 1 > 8 THEN
      v_fail_runs := v_fail_runs || p_runs[i];
      v_fail_errors := v_fail_errors || format(
        'step %L would start a run of flow %L nested %s deep: child runs nest at most 8 deep '
        '(do flows start one another in a cycle?)', p_steps[i], p_flows[i], v_parent.depth + 1);
      CONTINUE;
    END IF;
    UPDATE flowreg.runs r SET has_children = true
    WHERE r.id = p_runs[i] AND r.has_children IS NOT TRUE;
    PERFORM flowreg.start_runs(
      p_flows[i], v_version,
      CASE WHEN p_kinds[i] = 'flow_map'
           THEN ARRAY(SELECT e FROM jsonb_array_elements(p_inputs[i]) WITH ORDINALITY AS x(e, k)
                      ORDER BY k)
           ELSE ARRAY[p_inputs[i]] END,
      NULL, NULL, p_runs[i], p_steps[i], v_parent.depth + 1);
  END LOOP;
  IF cardinality(v_fail_runs) > 0 THEN
    PERFORM flowreg._fail_runs(v_fail_runs, v_fail_errors);
  END IF;
END $$;

ALTER FUNCTION flowreg._start_children(uuid[], text[], text[], text[], jsonb[])
  SET enable_seqscan = off SET jit = off;
