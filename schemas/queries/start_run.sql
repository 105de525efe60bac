-- One run without a key or a retried run: start_run's short path (a one-step flow's run) or,
-- inside it, start_runs. With either, start_runs directly (start_run_with.sql: start_run would
-- hand them on: one more function call).
SELECT run_id::text AS run_id, created FROM flowreg.start_run($1, $2, $3::jsonb)
