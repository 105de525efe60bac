-- Records failures: the ids rejected.
SELECT unnest(flowreg.fail_tasks($1::jsonb)) AS id
