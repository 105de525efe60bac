-- When a session sweeps again the flows that a claim begun at p_began swept (see _claim): after
-- 50 times the time the claim took so far, at least 1 s and at most 60 s from the claim's now();
-- epoch seconds, as flowreg.swept_<hex> keeps it.
CREATE OR REPLACE FUNCTION flowreg._next_sweep(p_began timestamptz)
RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT (extract(epoch FROM now())::float8
          + least(60.0, greatest(1.0, 50.0 * extract(epoch FROM clock_timestamp() - p_began)
                                                ::float8)))::text
$$;
