-- Sends event p_name with data p_data (migration 0026; docs/flows.md#wait-steps): every wait step
-- waiting for it now whose match holds (each pointer of the event's data has the value its step
-- read in its input when it started to wait) ends with the data as its output (_deliver). The
-- event is recorded (flowreg.events, with how many steps it resumed); a wait step that starts
-- later does not see it. With an idempotency key already sent under this name: that event's id and
-- count, duplicate true, nothing resumed again.
-- Cost: one index probe per distinct match of the wait steps on this event (flow_steps_by_event),
-- one per key (event_waits_by_match), then a bounded cost per run resumed: its run locked (in id
-- order, waiting: see README), its step state, its timeout's task and its dependents written in
-- set-based statements (_deliver), whatever the number of runs waiting for other values.
CREATE OR REPLACE FUNCTION flowreg.send_event(p_name text, p_data jsonb, p_key text DEFAULT NULL,
                                              OUT event_id bigint, OUT resumed int,
                                              OUT duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
  v_runs uuid[];
  v_steps text[];
BEGIN
  duplicate := false;
  IF p_key IS NOT NULL THEN
    INSERT INTO flowreg.events (name, data, idempotency_key) VALUES (p_name, p_data, p_key)
    ON CONFLICT (name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO event_id;
    IF event_id IS NULL THEN
      SELECT e.id, e.resumed INTO event_id, resumed FROM flowreg.events e
      WHERE e.name = p_name AND e.idempotency_key = p_key;
      duplicate := true;
      RETURN;
    END IF;
  ELSE
    INSERT INTO flowreg.events (name, data) VALUES (p_name, p_data) RETURNING id INTO event_id;
  END IF;
  -- The runs waiting under one of the keys this event's data makes, locked in id order.
  WITH keys AS (
    SELECT DISTINCT flowreg._match_key(fs.wait_match, p_data, 'event') AS k
    FROM flowreg.flow_steps fs WHERE fs.wait_event = p_name
  ),
  w AS (
    SELECT w.run_id, w.step_slug FROM keys
    CROSS JOIN LATERAL (SELECT w.run_id, w.step_slug FROM flowreg.event_waits w
                        WHERE w.event = p_name AND w.match_key = keys.k OFFSET 0) w
    WHERE keys.k IS NOT NULL
  ),
  -- Each run probed by its primary key (a nested loop driven by the waits found: no plan can read
  -- runs whole), locked in id order. (Filtering the waits by `run_id = ANY (the locked ids)`
  -- compared each with every id: a cost per run growing with their number.)
  locked AS (
    SELECT w.run_id, w.step_slug FROM w JOIN flowreg.runs r ON r.id = w.run_id
    WHERE r.status = 'started'
    ORDER BY r.id FOR UPDATE OF r
  )
  SELECT array_agg(l.run_id), array_agg(l.step_slug) INTO v_runs, v_steps FROM locked l;
  resumed := 0;
  IF v_runs IS NOT NULL THEN
    -- Those still waiting once their runs are locked (another event may have resumed them).
    resumed := flowreg._deliver(v_runs, v_steps,
                                array_fill(p_data, ARRAY[cardinality(v_runs)]));
  END IF;
  UPDATE flowreg.events SET resumed = send_event.resumed WHERE id = event_id;
END $$;

ALTER FUNCTION flowreg.send_event(text, jsonb, text)
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off;
