-- One worker cycle ($6: the lease in milliseconds, -1 for none): rows of kind 'rejected', 'due'
-- and claimed tasks, with the columns of a claimed task (claimed_task reads them, the same as
-- claim.sql's).
SELECT kind, due_in_ms, id, run_id::text AS run_id, flow_slug, flow_version, step_slug,
 task_index, attempt, input::text AS input, max_attempts, timeout_ms,
 (extract(epoch FROM lease_expires_at) * 1000000)::bigint AS lease_expires_at_us
 FROM flowreg.work($1, $2::jsonb, $3::jsonb, $4::jsonb, $5::int,
 NULLIF($6, -1)::bigint)
