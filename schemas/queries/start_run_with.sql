-- One run with an idempotency key ($4, '' for none) or a run retried ($5, '' for none): start_runs
-- directly (see start_run.sql).
SELECT run_id::text AS run_id, created FROM flowreg.start_runs($1, $2, ARRAY[$3::jsonb],
 CASE WHEN $4 = '' THEN NULL ELSE ARRAY[$4::text] END, NULLIF($5, '')::uuid)
