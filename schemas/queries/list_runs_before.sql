-- list_runs.sql after the run $4 in the same order.
-- The flows listed and the columns of a run: the same as list_runs.sql's.
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = '')
SELECT id::text AS id, flow_slug, flow_version, status, input::text AS input,
 output::text AS output, error, (extract(epoch FROM created_at) * 1000000)::bigint AS
 created_at_us, (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key,
 (extract(epoch FROM start_at) * 1000000)::bigint AS start_at_us, priority,
 (status = 'started' AND start_at > now()) IS TRUE AS scheduled
 FROM (SELECT created_at AS c, id AS i FROM flowreg.runs WHERE id = $4::uuid) k,
 listed l CROSS JOIN LATERAL (SELECT * FROM flowreg.runs r
  WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
   AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2
     OR ($2 = 'scheduled' AND r.status = 'started' AND r.start_at > now()))
   AND r.created_at <= k.c
   AND (r.created_at < k.c OR r.id > k.i)
  ORDER BY r.created_at DESC, r.id LIMIT $3::int) r
 ORDER BY created_at DESC, id LIMIT $3::int
