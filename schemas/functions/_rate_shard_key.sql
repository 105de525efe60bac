-- The key of shard p_shard of the p_shards buckets of a rate limit without a key (_rate_shards):
-- '' for shard 0 (the one bucket of releases before), U+0001 and the shard's number for another.
CREATE OR REPLACE FUNCTION flowreg._rate_shard_key(p_shard int, p_shards int)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_shard % p_shards = 0 THEN '' ELSE chr(1) || (p_shard % p_shards)::text END
$$;
