-- The newest runs first (created_at DESC, id), read one flow at a time through runs_by_flow: of
-- the flow $1, or else of every flow slug that has runs (migration 0015), by the hash of the
-- slug, its key (migration 0016), and the slug. $2: a status, or '' for all; $3: the limit.
-- The flows listed: $1, or every slug that has runs when $1 is empty (the slugs are not searched
-- then). Runs has no index on created_at alone (migration 0015): the runs of every flow are read
-- one flow at a time, through runs_by_flow (the same as list_runs_before.sql's).
-- The columns of a run (run_of reads them, the same as get_run.sql's).
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = '')
SELECT id::text AS id, flow_slug, flow_version, status, input::text AS input,
 output::text AS output, error, (extract(epoch FROM created_at) * 1000000)::bigint AS
 created_at_us, (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key,
 (extract(epoch FROM start_at) * 1000000)::bigint AS start_at_us, priority,
 (status = 'started' AND start_at > now()) IS TRUE AS scheduled
 FROM listed l CROSS JOIN LATERAL (SELECT * FROM flowreg.runs r
  WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
   AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2
     OR ($2 = 'scheduled' AND r.status = 'started' AND r.start_at > now()))
  ORDER BY r.created_at DESC, r.id LIMIT $3::int) r
 ORDER BY created_at DESC, id LIMIT $3::int
