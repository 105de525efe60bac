-- The ids of p_ids (distinct, ascending) that are not in p_accepted. Linear in the sizes (a hash
-- anti-join), never a scan of one array per element of the other. PL/pgSQL, whose plan is kept
-- for the session: as a LANGUAGE sql function (not inlinable: it has a FROM) it was parsed and
-- planned again in every transaction that called it, once per work() call (pgbench, one call per
-- transaction, 64 ids: 0.054-0.056 ms a call as sql, 0.039 as plpgsql, 3 rounds each). No
-- `SET jit = off`: its plan's cost is that of two unnests, far below jit_above_cost, and a SET
-- costs each call more than the rest of it.
CREATE OR REPLACE FUNCTION flowreg._rejected(p_ids bigint[], p_accepted bigint[])
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN (SELECT coalesce(array_agg(i ORDER BY i), '{}')
          FROM (SELECT i FROM unnest(p_ids) i EXCEPT SELECT a FROM unnest(p_accepted) a) x);
END $$;
