-- Deletes, among the at most $4 buckets of rate limits (migration 0024) after ($1, $2, $3) in the
-- order of their primary key, those whose tokens were last taken more than a day ago: such a
-- bucket is full whatever its limit's period (at most a day: RateLimit::kMaxPer), and a bucket
-- without a row is a full one. Returns how many it deleted and the key of the last bucket it read
-- (NULL when it read none: the walk is over). A claim taking tokens from a bucket meanwhile writes
-- it with an upsert (_claim_gated): deleted first, the bucket is inserted again as the full bucket
-- it was; written first (its `at` now), it is not deleted (the condition is checked again on the
-- row's new version).
-- The walk is a range of rate_buckets_pkey; each row deleted is found again by its ctid.
WITH walked AS MATERIALIZED (
 SELECT b.ctid AS tid, b.flow_slug, b.scope, b.key, b.at FROM flowreg.rate_buckets b
 WHERE (b.flow_slug, b.scope, b.key) > ($1::text, $2::text COLLATE "C", $3::text COLLATE "C")
 ORDER BY b.flow_slug, b.scope, b.key
 LIMIT $4::int),
gone AS (
 DELETE FROM flowreg.rate_buckets b
 WHERE b.ctid = ANY (ARRAY(SELECT w.tid FROM walked w WHERE w.at < now() - interval '1 day'))
   AND b.at < now() - interval '1 day'
 RETURNING 1),
last AS (
 SELECT w.flow_slug, w.scope, w.key FROM walked w
 ORDER BY w.flow_slug DESC, w.scope DESC, w.key DESC LIMIT 1)
SELECT (SELECT count(*) FROM gone) AS deleted, l.flow_slug AS last_flow, l.scope AS last_scope,
 l.key AS last_key
 FROM (SELECT 1) one LEFT JOIN last l ON true
