-- list_run_summaries.sql the other way: the runs of the same filter that come BEFORE the run $4
-- in its order (newer ones), oldest first, for a page of newer runs (the caller shows them newest
-- first). $1 to $7 as there; $4 is never ''. A cursor run pruned since: the runs from the start
-- of the millisecond its id holds (one created in that millisecond may be shown again).
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = ''),
k AS (SELECT coalesce((SELECT created_at FROM flowreg.runs WHERE id = nullif($4::text, '')::uuid),
   CASE WHEN substr($4, 15, 1) = '7' THEN timestamptz 'epoch' + interval '1 ms' *
     ('x' || substr(replace($4, '-', ''), 1, 12))::bit(48)::bigint END) AS c,
   nullif($4, '')::uuid AS i,
   coalesce(timestamptz 'epoch' + $5::bigint * interval '1 microsecond', '-infinity') AS since,
   coalesce(timestamptz 'epoch' + $6::bigint * interval '1 microsecond', 'infinity') AS until)
SELECT id::text AS id, flow_slug, flow_version, status, left(error, 400) AS error,
 pg_column_size(input) AS input_stored_bytes, pg_column_size(output) AS output_stored_bytes,
 (extract(epoch FROM created_at) * 1000000)::bigint AS created_at_us,
 (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key,
 (extract(epoch FROM start_at) * 1000000)::bigint AS start_at_us,
 (status = 'started' AND start_at > now()) IS TRUE AS scheduled
 FROM k, listed l CROSS JOIN LATERAL (SELECT c.* FROM (SELECT r.id, r.flow_slug, r.flow_version,
    r.status, r.error, r.input, r.output, r.created_at, r.finished_at, r.retry_of,
    r.idempotency_key, r.start_at
   FROM flowreg.runs r
   WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
    AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2
      OR ($2 = 'scheduled' AND r.status = 'started' AND r.start_at > now()))
    AND r.created_at >= k.since AND r.created_at < k.until
    AND r.created_at >= k.c AND (r.created_at > k.c OR r.id < k.i)
   ORDER BY r.created_at, r.id DESC
   LIMIT CASE WHEN $7 = '' THEN $3::int ELSE 10000 END) c
  WHERE $7 = '' OR (pg_column_size(c.input) <= 16384
                    AND strpos(lower(c.input::text), lower($7)) > 0)
  LIMIT $3::int) r
 ORDER BY created_at, id DESC LIMIT $3::int
