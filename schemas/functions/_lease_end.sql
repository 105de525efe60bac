-- When a lease taken now ends: least(the step's timeout, p_lease_ms) from now (p_lease_ms NULL:
-- the timeout). The one formula of _claim, renew_leases and the tasks created claimed
-- (_account_steps, _start_steps). One expression in LANGUAGE sql, STABLE, with no SET clause:
-- the planner inlines it into the calling statement, so it costs no call per row (hot_path's
-- plan tests check that it is inlined). A SET clause, jit = off included, would prevent that;
-- it reads no table.
CREATE OR REPLACE FUNCTION flowreg._lease_end(p_timeout_ms bigint, p_lease_ms bigint)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
  SELECT now() + least(p_timeout_ms, coalesce(p_lease_ms, p_timeout_ms)) * interval '1 ms'
$$;
