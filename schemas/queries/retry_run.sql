-- Starts a new run of an ended run's flow version with its input: its id.
SELECT flowreg.retry_run($1::uuid)::text AS run_id
