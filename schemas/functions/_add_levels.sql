-- Adds the priorities of a flow version's steps, and 0, to its priority levels (queue_levels,
-- migration 0022), which a claim walks. A level is never removed while the version is stored: a
-- run started with a priority adds its own (prioritize_runs), and a level with no task costs a
-- claim one index probe that finds nothing.
CREATE OR REPLACE FUNCTION flowreg._add_levels(p_slug text, p_version text)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO flowreg.queue_levels (flow_slug, flow_version, priority)
  SELECT p_slug, p_version, fs.priority FROM flowreg.flow_steps fs
  WHERE fs.flow_slug = p_slug AND fs.version = p_version
  UNION SELECT p_slug, p_version, 0
  ON CONFLICT DO NOTHING;
$$;

-- Its statement probes flow_steps by the version's key, whatever the statistics say.
ALTER FUNCTION flowreg._add_levels(text, text) SET enable_seqscan = off SET jit = off;
