-- list_run_summaries.sql after the run $4 in the same order (its columns, its flows).
-- The cursor is the run's (created_at, id). A run pruned since the page that named it is no longer
-- there to read (the page was empty): its created_at is then bounded by its id, a time-ordered
-- UUID (version 7) whose first 48 bits are the millisecond since the epoch in which it was made,
-- in the transaction that created the run, so at or after the run's created_at. The page is then
-- the runs created before the end of that millisecond: every run after the pruned one is there,
-- none skipped; a run created in that same millisecond that the previous page showed may be shown
-- again. An id of another version names no time: no runs.
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = '')
SELECT id::text AS id, flow_slug, flow_version, status, left(error, 400) AS error,
 pg_column_size(input) AS input_stored_bytes, pg_column_size(output) AS output_stored_bytes,
 (extract(epoch FROM created_at) * 1000000)::bigint AS created_at_us,
 (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key
 FROM (SELECT coalesce((SELECT created_at FROM flowreg.runs WHERE id = $4::uuid),
   CASE WHEN substr($4::uuid::text, 15, 1) = '7' THEN timestamptz 'epoch' + interval '1 ms' *
     (('x' || substr(replace($4::uuid::text, '-', ''), 1, 12))::bit(48)::bigint + 1) END)
   AS c, $4::uuid AS i) k,
 listed l CROSS JOIN LATERAL (SELECT r.id, r.flow_slug, r.flow_version, r.status, r.error,
   r.input, r.output, r.created_at, r.finished_at, r.retry_of, r.idempotency_key
  FROM flowreg.runs r
  WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
   AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2) AND r.created_at <= k.c
   AND (r.created_at < k.c OR r.id > k.i)
  ORDER BY r.created_at DESC, r.id LIMIT $3::int) r
 ORDER BY created_at DESC, id LIMIT $3::int
