-- Sends signal p_name with data p_data to run p_run (migration 0026; docs/flows.md#wait-steps):
-- the run's wait step on that signal, waiting, ends with the data as its output (_deliver); a
-- wait step not started yet finds it kept when it starts (_start_steps). Returns the signal's id
-- and what became of it: 'delivered', 'kept', or 'duplicate' (a signal with the same idempotency
-- key was sent to this run under this name before: that one's id, nothing written).
-- Refused (SQLSTATE P0002) when there is no such run; (22023, a conflict with the run's state)
-- when its flow version has no wait step on that signal, when the run has ended, when the signal
-- was already sent to it (each signal is delivered once), or when its wait step has ended (timed
-- out). Locks the run (a run with a wait step keeps step states: no solo task to lock first).
CREATE OR REPLACE FUNCTION flowreg.send_signal(p_run uuid, p_name text, p_data jsonb,
                                               p_key text DEFAULT NULL,
                                               OUT signal_id bigint, OUT outcome text)
LANGUAGE plpgsql AS $$
DECLARE
  v_run flowreg.runs%ROWTYPE;
  v_step text;
  v_state text;
  v_sent record;
BEGIN
  SELECT * INTO v_run FROM flowreg.runs r WHERE r.id = p_run;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('run %s does not exist', p_run);
  END IF;
  SELECT fs.step_slug INTO v_step FROM flowreg.flow_steps fs
  WHERE fs.flow_slug = v_run.flow_slug AND fs.version = v_run.flow_version
    AND fs.wait_signal = p_name;
  IF v_step IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'run %s (flow %L) waits for no signal %L: %s', p_run, v_run.flow_slug, p_name,
      coalesce('it waits for ' || (SELECT string_agg(format('%L', fs.wait_signal), ', '
                                                     ORDER BY fs.step_index)
                                   FROM flowreg.flow_steps fs
                                   WHERE fs.flow_slug = v_run.flow_slug
                                     AND fs.version = v_run.flow_version
                                     AND fs.wait_signal IS NOT NULL),
               'its flow has no wait step on a signal'));
  END IF;
  SELECT r.status INTO v_run.status FROM flowreg.runs r WHERE r.id = p_run FOR UPDATE;
  SELECT g.id, g.idempotency_key, g.sent_at, g.step_slug INTO v_sent FROM flowreg.signals g
  WHERE g.run_id = p_run AND g.name = p_name;
  IF FOUND AND p_key IS NOT NULL AND v_sent.idempotency_key = p_key THEN
    signal_id := v_sent.id;
    outcome := 'duplicate';
    RETURN;
  END IF;
  IF v_run.status <> 'started' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'run %s has ended (%s): it takes no signal', p_run, v_run.status);
  END IF;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'run %s already got signal %L (at %s): a signal is delivered once%s', p_run, p_name,
      to_char(v_sent.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
      CASE WHEN p_key IS NOT NULL THEN ' (its idempotency key was not this one)' ELSE '' END);
  END IF;
  SELECT s.status INTO v_state FROM flowreg.step_states s
  WHERE s.run_id = p_run AND s.step_slug = v_step;
  IF v_state NOT IN ('created', 'started') THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'run %s: step %L no longer waits for signal %L (it is %s)', p_run, v_step, p_name, v_state);
  END IF;
  INSERT INTO flowreg.signals (run_id, name, data, idempotency_key, step_slug, consumed_at)
  VALUES (p_run, p_name, p_data, p_key, CASE WHEN v_state = 'started' THEN v_step END,
          CASE WHEN v_state = 'started' THEN now() END)
  RETURNING id INTO signal_id;
  IF v_state = 'started' THEN
    PERFORM flowreg._deliver(ARRAY[p_run], ARRAY[v_step], ARRAY[p_data]);
    outcome := 'delivered';
  ELSE
    outcome := 'kept';
  END IF;
END $$;

ALTER FUNCTION flowreg.send_signal(uuid, text, jsonb, text) SET enable_seqscan = off SET jit = off;
