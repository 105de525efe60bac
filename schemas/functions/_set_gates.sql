-- Writes the gates of a flow version's steps (migration 0023) from its stored definition: a step's
-- own `concurrency` ({"limit", "key"}: a JSON pointer, absent for one key), else the flow's for
-- its root steps. Like a timeout, a changed gate applies to the tasks created from then on, but a
-- step left without one frees its queued tasks at once (they join tasks_queued), so that none
-- waits for a gate that no longer exists.
CREATE OR REPLACE FUNCTION flowreg._set_gates(p_slug text, p_version text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_def jsonb;
  v_freed text[];
BEGIN
  SELECT f.definition INTO v_def FROM flowreg.flows f
  WHERE f.slug = p_slug AND f.version = p_version;
  WITH g AS (
    SELECT s->>'slug' AS step_slug,
           CASE WHEN s ? 'concurrency' THEN (s->>'slug') || ':'
                WHEN v_def ? 'concurrency' AND jsonb_array_length(s->'depends_on') = 0 THEN ':'
           END AS prefix,
           coalesce(s->'concurrency', CASE WHEN jsonb_array_length(s->'depends_on') = 0
                                           THEN v_def->'concurrency' END) AS c
    FROM jsonb_array_elements(v_def->'steps') AS s
  ),
  upd AS (
    UPDATE flowreg.flow_steps fs
    SET gate_prefix = g.prefix,
        gate_limit = CASE WHEN g.prefix IS NOT NULL THEN (g.c->>'limit')::int END,
        -- "/a/b~1c" -> {a,b/c}; "" -> {} (the whole input).
        gate_path = CASE WHEN g.prefix IS NOT NULL AND g.c ? 'key' THEN
                      ARRAY(SELECT replace(replace(p.t, '~1', '/'), '~0', '~')
                            FROM unnest((string_to_array(g.c->>'key', '/'))[2:])
                                 WITH ORDINALITY AS p(t, i)
                            ORDER BY p.i) END
    FROM g
    WHERE fs.flow_slug = p_slug AND fs.version = p_version AND fs.step_slug = g.step_slug
      AND (fs.gate_prefix, fs.gate_limit, fs.gate_path) IS DISTINCT FROM
          (g.prefix, CASE WHEN g.prefix IS NOT NULL THEN (g.c->>'limit')::int END,
           CASE WHEN g.prefix IS NOT NULL AND g.c ? 'key' THEN
             ARRAY(SELECT replace(replace(p.t, '~1', '/'), '~0', '~')
                   FROM unnest((string_to_array(g.c->>'key', '/'))[2:]) WITH ORDINALITY AS p(t, i)
                   ORDER BY p.i) END)
    RETURNING fs.step_slug, fs.gate_prefix
  )
  SELECT array_agg(u.step_slug) INTO v_freed FROM upd u WHERE u.gate_prefix IS NULL;
  IF v_freed IS NOT NULL THEN
    UPDATE flowreg.tasks t SET gate = NULL
    WHERE t.status = 'queued' AND t.gate IS NOT NULL AND t.flow_slug = p_slug
      AND t.flow_version = p_version AND t.step_slug = ANY (v_freed);
    PERFORM pg_notify('flowreg_tasks', p_slug);
  END IF;
END $$;

ALTER FUNCTION flowreg._set_gates(text, text) SET jit = off;
