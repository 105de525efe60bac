-- A batch start by COPY (RunStore::start_runs): the runs' and tasks' ids, or no row.
SELECT run_id::text AS run_id, task_id, step_slug, timeout_ms, priority
 FROM flowreg._start_copying($1, $2, $3::int)
