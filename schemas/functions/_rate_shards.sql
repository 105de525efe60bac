-- How many buckets the tokens of a rate limit without a key (migration 0024) are spread over:
-- p_limit tokens a period in that many buckets of p_limit / shards each (_rate_shard_key). A
-- limit of 1,024 or more a period has 4 (each at least 256: a claim takes up to its room from
-- one, and from the next when it needs more), a smaller one 1: its tokens stay whole in one
-- bucket. A claim locks only the shards it needs, skipping those another claim holds, so that
-- the claims of several workers take tokens side by side instead of one after another
-- (_claim_gated); the limit, their sum, holds as before.
CREATE OR REPLACE FUNCTION flowreg._rate_shards(p_limit int)
RETURNS int LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_limit >= 1024 THEN 4 ELSE 1 END
$$;
