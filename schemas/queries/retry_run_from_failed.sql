-- Starts a new run of a failed run from its failed step (its completed steps copied): its id.
SELECT flowreg.retry_run_from_failed($1::uuid)::text AS run_id
