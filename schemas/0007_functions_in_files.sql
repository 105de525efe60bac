-- flowreg migration 0007: drops functions that nothing calls and no file of schemas/functions/
-- defines. A database migrated by an earlier flowreg has them; one created since never had them
-- (hence IF EXISTS): the lease claim without a lease TTL, the lease renewal without one, the
-- heartbeat without state and interval, and the step accounting that _account_steps replaced.
DROP FUNCTION IF EXISTS flowreg.claim_tasks(text, jsonb, int);
DROP FUNCTION IF EXISTS flowreg.renew_leases(text, jsonb);
DROP FUNCTION IF EXISTS flowreg.worker_heartbeat(text, text, int, jsonb, int, boolean);
DROP FUNCTION IF EXISTS flowreg._steps_completed(uuid[], text[]);
