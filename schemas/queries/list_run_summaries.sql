-- The newest runs first (created_at DESC, id), as summaries: the columns of list_runs.sql but the
-- input and the output, which are never read (a list of runs with inputs of 80 MB each read and
-- sent every byte of them). Of those two, pg_column_size reads the size a value takes in the
-- table (compressed, or out of line in the TOAST table) from its header alone: the value is
-- neither fetched nor decompressed. The error is cut to its first 400 characters (the caller
-- bounds it to bytes). $1: a flow slug, or '' for all; $2: a status, or '' for all; $3: the limit.
-- The flows are read one at a time through runs_by_flow, as list_runs.sql reads them.
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = '')
SELECT id::text AS id, flow_slug, flow_version, status, left(error, 400) AS error,
 pg_column_size(input) AS input_stored_bytes, pg_column_size(output) AS output_stored_bytes,
 (extract(epoch FROM created_at) * 1000000)::bigint AS created_at_us,
 (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key
 FROM listed l CROSS JOIN LATERAL (SELECT r.id, r.flow_slug, r.flow_version, r.status, r.error,
   r.input, r.output, r.created_at, r.finished_at, r.retry_of, r.idempotency_key
  FROM flowreg.runs r
  WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
   AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2)
  ORDER BY r.created_at DESC, r.id LIMIT $3::int) r
 ORDER BY created_at DESC, id LIMIT $3::int
