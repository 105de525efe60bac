-- Claims tasks ($1 worker, $2 flow keys, $3 limit). The columns of a claimed task (claimed_task
-- reads them, the same as work.sql's).
SELECT id, run_id::text AS run_id, flow_slug, flow_version, step_slug, task_index, attempt,
 input::text AS input, max_attempts, timeout_ms,
 (extract(epoch FROM lease_expires_at) * 1000000)::bigint AS lease_expires_at_us
 FROM flowreg._claim($1, $2::jsonb, $3::int, NULL)
