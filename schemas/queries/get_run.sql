-- A run by id, with the columns of a run (run_of reads them, the same as list_runs.sql's;
-- start_at_us and scheduled: a delayed start's, migration 0020).
-- Timestamps travel as microseconds since the epoch, in columns whose names end in _us.
SELECT id::text AS id, flow_slug, flow_version, status, input::text AS input,
 output::text AS output, error, (extract(epoch FROM created_at) * 1000000)::bigint AS
 created_at_us, (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key,
 (extract(epoch FROM start_at) * 1000000)::bigint AS start_at_us, priority,
 (status = 'started' AND start_at > now()) IS TRUE AS scheduled
 FROM flowreg.runs WHERE id = $1::uuid
