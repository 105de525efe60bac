-- Gives back tasks a worker holds: the ids released.
SELECT unnest(flowreg.release_tasks($1, $2::jsonb)) AS id
