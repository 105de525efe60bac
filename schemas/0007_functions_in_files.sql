-- flowreg migration 0007: the functions of schema flowreg are defined in schemas/functions/ from
-- now on, one file per function name, applied after the numbered migrations and again whenever a
-- file changes (core/src/store/migrations.hpp). Numbered migrations keep tables, indexes and data.
--
-- These functions are called by nothing and no file defines them: the lease claim without a lease
-- TTL, the lease renewal without one, the heartbeat without state and interval, and the step
-- accounting wrapper that _start_steps now skips (it calls _account_steps).
DROP FUNCTION flowreg.claim_tasks(text, jsonb, int);
DROP FUNCTION flowreg.renew_leases(text, jsonb);
DROP FUNCTION flowreg.worker_heartbeat(text, text, int, jsonb, int, boolean);
DROP FUNCTION flowreg._steps_completed(uuid[], text[]);
