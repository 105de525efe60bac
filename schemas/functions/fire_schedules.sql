-- Fires due schedules, a batch in one call: for each firing of p_firings (a JSON array of {name,
-- expected, version, ticks, inputs, next, missed, error, skip}; times as microseconds since the
-- epoch, `next` null for none), locks its schedule's row unless another transaction holds it (SKIP
-- LOCKED: that one fires it; rows this transaction locked already, as the worker's read of the due
-- schedules does, are its own), checks that its next tick is still `expected` (else it was fired
-- since it was read), applies the overlap policy, and collects one run per tick, with the
-- idempotency key 'schedule:<name>:<tick as RFC 3339 UTC>'. The runs of the batch then start in one
-- call of start_runs per flow version, and each schedule that started runs advances to `next`, its
-- last run being its last tick's.
--
-- The ticks are computed by the caller from the cron expression (with the catch-up policy applied:
-- `missed` counts the ticks it dropped); `error`, when set, records why none can start (the input
-- refused by the flow's input schema) and advances the schedule without a run; `skip`, when set,
-- why none is to start by policy (catch_up: none, every tick too late): the ticks are counted as
-- skipped and the schedule advances without a run, its outcome 'skipped'.
--
-- Overlap, when the schedule's last run is still running: 'allow' starts anyway; 'skip' drops the
-- ticks (counted in skipped) and advances; 'queue' keeps the schedule due at `expected`, so the
-- tick fires once that run ended (ticks passing meanwhile: the catch-up policy).
--
-- Returns one row per firing: its outcome ('started', 'skipped', 'waiting', 'error', or 'gone'
-- when the row was locked elsewhere, paused, deleted or already advanced) and the runs started.
CREATE OR REPLACE FUNCTION flowreg.fire_schedules(p_firings jsonb)
RETURNS TABLE (name text, outcome text, started int) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  f jsonb;
  v flowreg.schedules%ROWTYPE;
  v_busy uuid;
  v_ticks timestamptz[];
  v_n int;
  v_next timestamptz;
  v_missed int;
  v_key text;
  v_why text;
  -- One element per run to start.
  t_slugs text[] := '{}';
  t_versions text[] := '{}';
  t_inputs jsonb[] := '{}';
  t_keys text[] := '{}';
  -- One element per schedule that starts runs.
  s_names text[] := '{}';
  s_slugs text[] := '{}';
  s_keys text[] := '{}';
  s_next timestamptz[] := '{}';
  s_last timestamptz[] := '{}';
  s_n int[] := '{}';
  s_missed int[] := '{}';
  g record;
  i int;
BEGIN
  FOR f IN SELECT x FROM jsonb_array_elements(p_firings) AS x LOOP
    name := f->>'name';
    started := 0;
    SELECT * INTO v FROM flowreg.schedules s
    WHERE s.name = f->>'name' AND s.next_fire_at = to_timestamp((f->>'expected')::bigint / 1e6)
      AND NOT s.paused
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      outcome := 'gone';
      RETURN NEXT;
      CONTINUE;
    END IF;
    v_ticks := ARRAY(SELECT to_timestamp(t::bigint / 1e6)
                     FROM jsonb_array_elements_text(f->'ticks') AS t);
    v_n := cardinality(v_ticks);
    v_next := to_timestamp((f->>'next')::bigint / 1e6);
    v_missed := coalesce((f->>'missed')::int, 0);

    IF f->>'error' IS NOT NULL THEN
      UPDATE flowreg.schedules s
      SET next_fire_at = v_next, last_tick_at = v_ticks[v_n],
          skipped = s.skipped + v_n + v_missed,
          last_outcome = 'error: ' || left(f->>'error', 1000), updated_at = now()
      WHERE s.name = v.name;
      outcome := 'error';
      RETURN NEXT;
      CONTINUE;
    END IF;

    -- Skipped by the catch-up policy (`skip`), or (below) by the overlap policy.
    v_why := f->>'skip';
    v_busy := NULL;
    IF v_why IS NULL AND v.overlap <> 'allow' AND v.last_run_id IS NOT NULL THEN
      SELECT r.id INTO v_busy FROM flowreg.runs r
      WHERE r.id = v.last_run_id AND r.status = 'started';
    END IF;
    IF v_busy IS NOT NULL AND v.overlap = 'queue' THEN
      v_why := 'waiting: its last run ' || v_busy || ' is still running (overlap: queue)';
      UPDATE flowreg.schedules s SET last_outcome = v_why
      WHERE s.name = v.name AND s.last_outcome IS DISTINCT FROM v_why;
      outcome := 'waiting';
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF v_busy IS NOT NULL THEN
      v_why := 'its last run ' || v_busy || ' was still running (overlap: skip)';
    END IF;
    IF v_why IS NOT NULL THEN
      UPDATE flowreg.schedules s
      SET next_fire_at = v_next, last_tick_at = v_ticks[v_n],
          skipped = s.skipped + v_n + v_missed,
          last_outcome = 'skipped ' || to_char(v_ticks[v_n] AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                         || ': ' || left(v_why, 1000),
          updated_at = now()
      WHERE s.name = v.name;
      outcome := 'skipped';
      RETURN NEXT;
      CONTINUE;
    END IF;

    FOR i IN 1 .. v_n LOOP
      v_key := 'schedule:' || v.name || ':'
               || to_char(v_ticks[i] AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
      t_slugs := array_append(t_slugs, v.flow_slug);
      t_versions := array_append(t_versions, f->>'version');
      t_inputs := array_append(t_inputs, f->'inputs'->(i - 1));
      t_keys := array_append(t_keys, v_key);
    END LOOP;
    s_names := array_append(s_names, v.name);
    s_slugs := array_append(s_slugs, v.flow_slug);
    s_keys := array_append(s_keys, v_key);
    s_next := array_append(s_next, v_next);
    s_last := array_append(s_last, v_ticks[v_n]);
    s_n := array_append(s_n, v_n);
    s_missed := array_append(s_missed, v_missed);
  END LOOP;

  FOR g IN SELECT DISTINCT u.s, u.ver FROM unnest(t_slugs, t_versions) AS u(s, ver) LOOP
    PERFORM flowreg.start_runs(
      g.s, g.ver,
      ARRAY(SELECT u.i FROM unnest(t_slugs, t_versions, t_inputs) WITH ORDINALITY AS u(s, ver, i, n)
            WHERE u.s = g.s AND u.ver = g.ver ORDER BY u.n),
      ARRAY(SELECT u.k FROM unnest(t_slugs, t_versions, t_keys) WITH ORDINALITY AS u(s, ver, k, n)
            WHERE u.s = g.s AND u.ver = g.ver ORDER BY u.n));
  END LOOP;

  FOR i IN 1 .. cardinality(s_names) LOOP
    UPDATE flowreg.schedules s
    SET next_fire_at = s_next[i], last_tick_at = s_last[i], last_fired_at = now(),
        last_run_id = coalesce((SELECT r.id FROM flowreg.runs r
                                WHERE r.flow_slug = s_slugs[i] AND r.idempotency_key = s_keys[i]),
                               s.last_run_id),
        fired = s.fired + s_n[i], skipped = s.skipped + s_missed[i], last_outcome = 'started',
        updated_at = now()
    WHERE s.name = s_names[i];
    name := s_names[i];
    outcome := 'started';
    started := s_n[i];
    RETURN NEXT;
  END LOOP;
END $$;

ALTER FUNCTION flowreg.fire_schedules(jsonb)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
