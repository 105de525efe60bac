-- Records completions: the ids rejected.
SELECT unnest(flowreg.complete_tasks($1::jsonb)) AS id
