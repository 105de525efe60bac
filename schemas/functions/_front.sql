-- Where this session's walks of tasks_queued start for the flow whose hash is p_hex (to_hex of
-- tasks_queued's hash of slug and version) at level p_level: the session setting
-- flowreg.front_<p_hex>_<hex of p_level> that _claim writes (epoch seconds), or NULL: from the
-- oldest entry. Stable, and simple enough to be inlined: a claim compares it with available_at
-- as a bound of its index scan.
CREATE OR REPLACE FUNCTION flowreg._front(p_hex text, p_level int)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
  SELECT to_timestamp(nullif(current_setting('flowreg.front_' || p_hex || '_' || to_hex(p_level),
                                             true), '')::float8)
$$;
