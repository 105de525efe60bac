-- Stores a flow version. A version is its shape (steps, kinds, dependencies, handlers, compared by
-- _flow_shape); tuning options and the input schema are not part of it. Storing the same definition
-- again changes nothing (false); storing the same shape with other options updates them and
-- returns true: new attempts and retry delays apply to its queued and running tasks too (a task
-- reads them from its step: migration 0014), a new timeout to the tasks created from then on. A
-- different shape under a stored (slug, version) is refused (SQLSTATE 22023), because runs pinned
-- to it must never change. A step's priority (`options.priority`, absent: 0) is an option too;
-- the version's priority levels (queue_levels, migration 0022) get its steps' priorities. So are
-- the flow's and the steps' concurrency limits (`concurrency`, migration 0023: _set_gates). A
-- sleep step's `sleep` ({"ms"} or {"until": pointer}, migration 0025) is shape, and so is a wait
-- step's `wait` ({"signal"} or {"event", "match": {event pointer: input pointer}}, with
-- "timeout_ms" and "default" when set: migration 0026), and a step's condition (`when`) and
-- `trigger` (migration 0027). A step is `checked` when it has a condition or a dependency that is
-- checked: the steps that may be skipped, whose start _start_steps decides. A flow step's `child`
-- ({"flow", "map"}, migration 0028) is shape: its kind is stored as flow_map for a map over the
-- child flow, flow otherwise, and its flow's slug as child_flow.
CREATE OR REPLACE FUNCTION flowreg.upsert_flow(p_slug text, p_version text, p_def jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_stored jsonb;
  v_checked text[];
BEGIN
  INSERT INTO flowreg.flows (slug, version, definition) VALUES (p_slug, p_version, p_def)
  ON CONFLICT (slug, version) DO NOTHING;
  IF NOT FOUND THEN
    SELECT definition INTO v_stored FROM flowreg.flows
    WHERE slug = p_slug AND version = p_version FOR UPDATE;
    IF v_stored = p_def THEN
      RETURN false;
    END IF;
    IF flowreg._flow_shape(v_stored) IS DISTINCT FROM flowreg._flow_shape(p_def) THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
        'flow %L version %L is already stored with a different definition', p_slug, p_version);
    END IF;
    UPDATE flowreg.flows SET definition = p_def WHERE slug = p_slug AND version = p_version;
    UPDATE flowreg.flow_steps fs
    SET max_attempts = (s->'options'->>'max_attempts')::int,
        base_delay_ms = (s->'options'->>'base_delay_ms')::bigint,
        max_delay_ms = (s->'options'->>'max_delay_ms')::bigint,
        timeout_ms = (s->'options'->>'timeout_ms')::bigint,
        priority = coalesce((s->'options'->>'priority')::int, 0)
    FROM jsonb_array_elements(p_def->'steps') AS s
    WHERE fs.flow_slug = p_slug AND fs.version = p_version AND fs.step_slug = s->>'slug';
    PERFORM flowreg._add_levels(p_slug, p_version);
    PERFORM flowreg._set_gates(p_slug, p_version);
    RETURN true;
  END IF;
  -- The steps that may be skipped: those with a condition, and every step depending on one.
  WITH RECURSIVE c(slug) AS (
    SELECT s->>'slug' FROM jsonb_array_elements(p_def->'steps') AS s WHERE s ? 'when'
    UNION
    SELECT s->>'slug' FROM c CROSS JOIN jsonb_array_elements(p_def->'steps') AS s
    WHERE s->'depends_on' ? c.slug
  )
  SELECT coalesce(array_agg(c.slug), '{}') INTO v_checked FROM c;
  INSERT INTO flowreg.flow_steps (flow_slug, version, step_slug, step_index, kind, handler, deps,
                                  is_leaf, max_attempts, base_delay_ms, max_delay_ms, timeout_ms,
                                  priority, sleep_ms, sleep_path, wait_signal, wait_event,
                                  wait_match, wait_timeout_ms, when_cond, trigger_any, checked,
                                  child_flow)
  SELECT p_slug, p_version, s->>'slug', (i - 1)::int,
         CASE WHEN s->>'kind' = 'flow' AND (s->'child'->>'map')::boolean THEN 'flow_map'
              ELSE s->>'kind' END,
         coalesce(s->>'handler', ''),
         ARRAY(SELECT jsonb_array_elements_text(s->'depends_on')),
         NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_def->'steps') o
                     WHERE o->'depends_on' ? (s->>'slug')),
         (s->'options'->>'max_attempts')::int, (s->'options'->>'base_delay_ms')::bigint,
         (s->'options'->>'max_delay_ms')::bigint, (s->'options'->>'timeout_ms')::bigint,
         coalesce((s->'options'->>'priority')::int, 0),
         -- A sleep step's (migration 0025): its duration, or the pointer to the time it sleeps
         -- until as a path ("/a/b~1c" -> {a,b/c}).
         (s->'sleep'->>'ms')::bigint,
         CASE WHEN s->'sleep' ? 'until' THEN flowreg._pointer_path(s->'sleep'->>'until') END,
         -- A wait step's (migration 0026): its match as pairs of paths, sorted by event pointer.
         s->'wait'->>'signal', s->'wait'->>'event',
         CASE WHEN s->'wait' ? 'event' THEN
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                              'at', m.key, 'from', m.value #>> '{}',
                              'event', to_jsonb(flowreg._pointer_path(m.key)),
                              'run', to_jsonb(flowreg._pointer_path(m.value #>> '{}')))
                            ORDER BY m.key)
                     FROM jsonb_each(s->'wait'->'match') AS m), '[]'::jsonb) END,
         (s->'wait'->>'timeout_ms')::bigint,
         -- A condition and a trigger (migration 0027).
         s->'when', coalesce(s->>'trigger', 'all') = 'any', (s->>'slug') = ANY (v_checked),
         -- A flow step's child flow (migration 0028).
         s->'child'->>'flow'
  FROM jsonb_array_elements(p_def->'steps') WITH ORDINALITY AS x(s, i);
  PERFORM flowreg._add_levels(p_slug, p_version);
  PERFORM flowreg._set_gates(p_slug, p_version);
  INSERT INTO flowreg.flow_deps (flow_slug, version, dep_slug, step_slug, checked)
  SELECT p_slug, p_version, d, s->>'slug', (s->>'slug') = ANY (v_checked)
  FROM jsonb_array_elements(p_def->'steps') s, jsonb_array_elements_text(s->'depends_on') d;
  RETURN true;
END $$;

ALTER FUNCTION flowreg.upsert_flow(text, text, jsonb) SET jit = off;
