-- The runs found by their id $1 or by their idempotency key $2, as summaries (the columns of
-- list_run_summaries.sql), newest first, at most $5; of the flow $3 ('' for any) with the status
-- $4 ('' for any). With an id ($1 <> ''), the run of that id (its primary key), when its key is
-- $2 or $2 is ''; else, with a key, the runs of each flow that has runs with that key, through
-- runs_idempotency (flow_slug, idempotency_key): a key names at most one run per flow.
WITH listed(slug) AS (SELECT $3::text WHERE $3 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $3 = '')
SELECT id::text AS id, flow_slug, flow_version, status, left(error, 400) AS error,
 pg_column_size(input) AS input_stored_bytes, pg_column_size(output) AS output_stored_bytes,
 (extract(epoch FROM created_at) * 1000000)::bigint AS created_at_us,
 (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key,
 (extract(epoch FROM start_at) * 1000000)::bigint AS start_at_us,
 (status = 'started' AND start_at > now()) IS TRUE AS scheduled
 FROM (SELECT r.id, r.flow_slug, r.flow_version, r.status, r.error, r.input, r.output,
   r.created_at, r.finished_at, r.retry_of, r.idempotency_key, r.start_at
  FROM flowreg.runs r
  WHERE $1 <> '' AND r.id = nullif($1, '')::uuid AND ($2 = '' OR r.idempotency_key = $2)
   AND ($3 = '' OR r.flow_slug = $3) AND ($4 = '' OR r.status = $4
     OR ($4 = 'scheduled' AND r.status = 'started' AND r.start_at > now()))
  UNION ALL
  SELECT r.id, r.flow_slug, r.flow_version, r.status, r.error, r.input, r.output,
   r.created_at, r.finished_at, r.retry_of, r.idempotency_key, r.start_at
  FROM listed l CROSS JOIN LATERAL (SELECT * FROM flowreg.runs r
   WHERE $1 = '' AND $2 <> '' AND r.flow_slug = l.slug AND r.idempotency_key = $2
    AND ($4 = '' OR r.status = $4
      OR ($4 = 'scheduled' AND r.status = 'started' AND r.start_at > now()))) r) found
 ORDER BY created_at DESC, id LIMIT $5::int
