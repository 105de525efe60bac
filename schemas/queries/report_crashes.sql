-- Reports tasks that were running in a worker that died: what was done with each.
SELECT id, outcome FROM flowreg.report_crashes($1::jsonb, $2::int)
