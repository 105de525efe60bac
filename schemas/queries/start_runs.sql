-- A batch of runs ($3: a JSON array of inputs) in one call of start_runs.
SELECT run_id::text AS run_id FROM flowreg.start_runs($1, $2,
 ARRAY(SELECT jsonb_array_elements($3::jsonb)))
