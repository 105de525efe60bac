-- Ends wait steps (migration 0026) with what they waited for: each given step of each given run,
-- when it is a wait step still started, completes with the given data as its output; its
-- timeout's task leaves the queue (queued or claimed: a later result of it is rejected, its row
-- being gone), then its dependents start and its run may complete, as after a task's completion
-- (_account_steps, _start_steps). Returns the steps ended (a step no longer waiting is left as
-- it is). REQUIRES: the runs are locked, in id order (see README: runs, then tasks, then step
-- states).
-- Plans stable by construction, as in _account_steps: nested loops driven by the steps given,
-- probing primary keys (tasks through tasks_by_run).
CREATE OR REPLACE FUNCTION flowreg._deliver(p_runs uuid[], p_steps text[], p_data jsonb[])
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
  v_runs uuid[];
  v_steps text[];
  v_flows text[];
  v_versions text[];
  v_going uuid[];
BEGIN
  WITH p AS (SELECT * FROM unnest(p_runs, p_steps) AS p(run_id, step_slug))
  DELETE FROM flowreg.tasks t USING p
  WHERE t.run_id = ANY (ARRAY[p.run_id]) AND t.step_slug = p.step_slug AND NOT t.solo;
  WITH p AS (
    SELECT DISTINCT ON (x.run_id, x.step_slug) x.run_id, x.step_slug, x.data
    FROM unnest(p_runs, p_steps, p_data) WITH ORDINALITY AS x(run_id, step_slug, data, i)
    ORDER BY x.run_id, x.step_slug, x.i
  ),
  upd AS (
    UPDATE flowreg.step_states s
    SET status = 'completed', output = p.data, remaining_tasks = 0, finished_at = now()
    FROM p
    WHERE s.run_id = ANY (ARRAY[p.run_id]) AND s.step_slug = ANY (ARRAY[p.step_slug])
      AND s.status = 'started' AND s.kind = 'wait'
    RETURNING s.run_id, s.step_slug
  )
  SELECT array_agg(u.run_id), array_agg(u.step_slug), array_agg(r.flow_slug),
         array_agg(r.flow_version)
  INTO v_runs, v_steps, v_flows, v_versions
  FROM upd u
  CROSS JOIN LATERAL (SELECT r.flow_slug, r.flow_version FROM flowreg.runs r
                      WHERE r.id = u.run_id OFFSET 0) r;
  IF v_runs IS NULL THEN
    RETURN 0;
  END IF;
  DELETE FROM flowreg.event_waits w
  USING unnest(v_runs, v_steps) AS p(run_id, step_slug)
  WHERE w.run_id = ANY (ARRAY[p.run_id]) AND w.step_slug = p.step_slug;
  v_going := flowreg._account_steps(v_runs, v_steps, v_flows, v_versions);
  IF cardinality(v_going) > 0 THEN
    PERFORM flowreg._start_steps(v_going);
  END IF;
  RETURN cardinality(v_runs);
END $$;

ALTER FUNCTION flowreg._deliver(uuid[], text[], jsonb[])
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
