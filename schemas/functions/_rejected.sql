-- The ids of p_ids (distinct, ascending) that are not in p_accepted. Linear in the sizes (a hash
-- anti-join), never a scan of one array per element of the other.
CREATE OR REPLACE FUNCTION flowreg._rejected(p_ids bigint[], p_accepted bigint[])
RETURNS bigint[] LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(array_agg(i ORDER BY i), '{}')
  FROM (SELECT i FROM unnest(p_ids) i EXCEPT SELECT a FROM unnest(p_accepted) a) x
$$;
