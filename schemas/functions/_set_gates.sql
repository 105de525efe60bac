-- Writes the gates of a flow version's steps (migrations 0023, 0024) from its stored definition.
-- Concurrency: a step's own `concurrency` ({"limit", "key"}: a JSON pointer, absent for one key),
-- else the flow's for its root steps. Rate limits: a step's own `rate_limit` ({"limit", "per_ms",
-- "key"}), else the flow's, for every step but a sleep or wait step (migrations 0025, 0026); a
-- rate-limited step without a concurrency limit gets the gate '|<step>:' keyed by the rate
-- limit's key (migration 0024: no running task counted).
-- (The model refuses a rate limit on a root step of a flow with a concurrency limit, and a rate
-- limit keyed by another pointer than the concurrency limit over the same tasks.) Like a timeout,
-- a changed limit applies to the tasks created from then on, but a step left without one frees
-- its queued tasks at once (they join tasks_queued), and a step whose gate changed moves its
-- queued gated tasks to the new one, so that none waits for a gate that no longer exists.
CREATE OR REPLACE FUNCTION flowreg._set_gates(p_slug text, p_version text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_def jsonb;
  v_freed text[];
  v_moved text[];
BEGIN
  SELECT f.definition INTO v_def FROM flowreg.flows f
  WHERE f.slug = p_slug AND f.version = p_version;
  WITH s AS (
    SELECT s->>'slug' AS step_slug,
           coalesce(s->'concurrency', CASE WHEN jsonb_array_length(s->'depends_on') = 0
                                           THEN v_def->'concurrency' END) AS c,
           -- A sleep or wait step's task (migrations 0025, 0026) takes no token: it runs no
           -- handler.
           CASE WHEN coalesce(s->>'kind', '') NOT IN ('sleep', 'wait')
                THEN coalesce(s->'rate_limit', v_def->'rate_limit') END AS r,
           CASE WHEN s ? 'rate_limit' THEN s->>'slug' ELSE '' END AS scope,
           s ? 'concurrency' OR jsonb_array_length(s->'depends_on') > 0 AS own
    FROM jsonb_array_elements(v_def->'steps') AS s
  ),
  g AS (
    SELECT s.step_slug,
           CASE WHEN s.c IS NOT NULL AND NOT s.own THEN ':'
                WHEN s.c IS NOT NULL THEN s.step_slug || ':'
                WHEN s.r IS NOT NULL THEN '|' || s.step_slug || ':' END AS prefix,
           (s.c->>'limit')::int AS gate_limit,
           -- "/a/b~1c" -> {a,b/c}; "" -> {} (the whole input); NULL: one key.
           CASE WHEN coalesce(s.c, s.r) ? 'key' THEN
             ARRAY(SELECT replace(replace(p.t, '~1', '/'), '~0', '~')
                   FROM unnest((string_to_array(coalesce(s.c, s.r)->>'key', '/'))[2:])
                        WITH ORDINALITY AS p(t, i)
                   ORDER BY p.i) END AS path,
           (s.r->>'limit')::int AS rate_limit, (s.r->>'per_ms')::bigint AS rate_per_ms,
           CASE WHEN s.r IS NOT NULL THEN s.scope END AS rate_scope,
           CASE WHEN s.r IS NOT NULL THEN s.r ? 'key' END AS rate_keyed
    FROM s
  ),
  old AS (
    SELECT fs.step_slug, fs.gate_prefix, fs.gate_path FROM flowreg.flow_steps fs
    WHERE fs.flow_slug = p_slug AND fs.version = p_version
  ),
  upd AS (
    UPDATE flowreg.flow_steps fs
    SET gate_prefix = g.prefix, gate_limit = g.gate_limit, gate_path = g.path,
        rate_limit = g.rate_limit, rate_per_ms = g.rate_per_ms, rate_scope = g.rate_scope,
        rate_keyed = g.rate_keyed
    FROM g
    WHERE fs.flow_slug = p_slug AND fs.version = p_version AND fs.step_slug = g.step_slug
      AND (fs.gate_prefix, fs.gate_limit, fs.gate_path, fs.rate_limit, fs.rate_per_ms,
           fs.rate_scope, fs.rate_keyed) IS DISTINCT FROM
          (g.prefix, g.gate_limit, g.path, g.rate_limit, g.rate_per_ms, g.rate_scope,
           g.rate_keyed)
    RETURNING fs.step_slug, fs.gate_prefix, fs.gate_path
  )
  SELECT array_agg(u.step_slug) FILTER (WHERE u.gate_prefix IS NULL),
         array_agg(u.step_slug) FILTER (WHERE u.gate_prefix IS NOT NULL
                                          AND o.gate_prefix IS NOT NULL
                                          AND (u.gate_prefix, u.gate_path)
                                              IS DISTINCT FROM (o.gate_prefix, o.gate_path))
  INTO v_freed, v_moved
  FROM upd u JOIN old o ON o.step_slug = u.step_slug;
  IF v_moved IS NOT NULL THEN
    -- A step whose gate changed (another limit, another key): its queued gated tasks move to the
    -- new gate, their keys read again from their runs' inputs, so that none waits in a gate no
    -- claim visits any more.
    UPDATE flowreg.tasks t
    SET gate = flowreg._gate_of(fs.gate_prefix, r.input, fs.gate_path)
    FROM flowreg.flow_steps fs, flowreg.runs r
    WHERE t.status = 'queued' AND t.gate IS NOT NULL AND t.flow_slug = p_slug
      AND t.flow_version = p_version AND t.step_slug = ANY (v_moved)
      AND fs.flow_slug = p_slug AND fs.version = p_version AND fs.step_slug = t.step_slug
      AND r.id = t.run_id;
    PERFORM pg_notify('flowreg_tasks', p_slug);
  END IF;
  IF v_freed IS NOT NULL THEN
    UPDATE flowreg.tasks t SET gate = NULL
    WHERE t.status = 'queued' AND t.gate IS NOT NULL AND t.flow_slug = p_slug
      AND t.flow_version = p_version AND t.step_slug = ANY (v_freed);
    PERFORM pg_notify('flowreg_tasks', p_slug);
  END IF;
END $$;

ALTER FUNCTION flowreg._set_gates(text, text) SET jit = off;
