-- Fires one due schedule, in one transaction: locks its row unless another worker holds it (SKIP
-- LOCKED: that one fires it), checks that its next tick is still p_expected (else another worker
-- fired it since it was read), applies its overlap policy, starts one run per tick of p_ticks
-- (p_inputs[i] for p_ticks[i]) of flow version p_version with the idempotency key
-- 'schedule:<name>:<tick as RFC 3339 UTC>', and advances next_fire_at to p_next.
--
-- The ticks are computed by the caller from the cron expression (with the catch-up policy applied:
-- p_missed counts the ticks it drops); p_error, when set, records why none can start (the input
-- refused by the flow's input schema) and advances the schedule without a run.
--
-- Overlap, when the schedule's last run is still running: 'allow' starts anyway; 'skip' drops the
-- ticks (counted in skipped) and advances; 'queue' keeps the schedule due at p_expected, so the
-- tick fires once that run ended (ticks passing meanwhile: the catch-up policy).
--
-- Returns the outcome ('started', 'skipped', 'waiting', 'error', or 'gone' when the row was
-- locked elsewhere, paused, deleted or already advanced) and the runs started.
CREATE OR REPLACE FUNCTION flowreg.fire_schedule(p_name text, p_expected timestamptz,
                                                 p_version text, p_ticks timestamptz[],
                                                 p_inputs jsonb[], p_next timestamptz,
                                                 p_missed int, p_error text)
RETURNS TABLE (outcome text, run_ids uuid[]) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v flowreg.schedules%ROWTYPE;
  v_busy uuid;
  v_runs uuid[] := '{}';
  v_run uuid;
  i int;
BEGIN
  SELECT * INTO v FROM flowreg.schedules s
  WHERE s.name = p_name AND s.next_fire_at = p_expected AND NOT s.paused
  FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    outcome := 'gone';
    RETURN NEXT;
    RETURN;
  END IF;

  IF p_error IS NOT NULL THEN
    UPDATE flowreg.schedules s
    SET next_fire_at = p_next, last_tick_at = p_ticks[cardinality(p_ticks)],
        skipped = s.skipped + cardinality(p_ticks) + p_missed,
        last_outcome = 'error: ' || left(p_error, 1000), updated_at = now()
    WHERE s.name = p_name;
    outcome := 'error';
    RETURN NEXT;
    RETURN;
  END IF;

  IF v.overlap <> 'allow' AND v.last_run_id IS NOT NULL THEN
    SELECT r.id INTO v_busy FROM flowreg.runs r
    WHERE r.id = v.last_run_id AND r.status = 'started';
  END IF;
  IF v_busy IS NOT NULL AND v.overlap = 'queue' THEN
    UPDATE flowreg.schedules s
    SET last_outcome = 'waiting: its last run ' || v_busy || ' is still running (overlap: queue)'
    WHERE s.name = p_name AND s.last_outcome IS DISTINCT FROM
          'waiting: its last run ' || v_busy || ' is still running (overlap: queue)';
    outcome := 'waiting';
    RETURN NEXT;
    RETURN;
  END IF;
  IF v_busy IS NOT NULL THEN
    UPDATE flowreg.schedules s
    SET next_fire_at = p_next, last_tick_at = p_ticks[cardinality(p_ticks)],
        skipped = s.skipped + cardinality(p_ticks) + p_missed,
        last_outcome = 'skipped ' || to_char(p_ticks[cardinality(p_ticks)] AT TIME ZONE 'UTC',
                                             'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                       || ': its last run ' || v_busy || ' was still running (overlap: skip)',
        updated_at = now()
    WHERE s.name = p_name;
    outcome := 'skipped';
    RETURN NEXT;
    RETURN;
  END IF;

  FOR i IN 1 .. coalesce(cardinality(p_ticks), 0) LOOP
    SELECT x.run_id INTO v_run
    FROM flowreg.start_runs(v.flow_slug, p_version, ARRAY[p_inputs[i]],
                            ARRAY['schedule:' || p_name || ':'
                                  || to_char(p_ticks[i] AT TIME ZONE 'UTC',
                                             'YYYY-MM-DD"T"HH24:MI:SS"Z"')]) AS x;
    v_runs := v_runs || v_run;
  END LOOP;
  UPDATE flowreg.schedules s
  SET next_fire_at = p_next, last_tick_at = p_ticks[cardinality(p_ticks)], last_fired_at = now(),
      last_run_id = coalesce(v_runs[cardinality(v_runs)], s.last_run_id),
      fired = s.fired + cardinality(v_runs), skipped = s.skipped + p_missed,
      last_outcome = 'started', updated_at = now()
  WHERE s.name = p_name;
  outcome := 'started';
  run_ids := v_runs;
  RETURN NEXT;
END $$;

ALTER FUNCTION flowreg.fire_schedule(text, timestamptz, text, timestamptz[], jsonb[], timestamptz,
                                     int, text)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
