-- flowreg migration 0030: the state of a worker's handler processes (isolation: process).
--
-- * workers.handler_processes: what the worker said of its pools of handler processes at its
--   last heartbeat (worker/handler_process.hpp), summed over the pools it has now: processes
--   alive and busy, started (replacements included), and how many ended during a task, by why
--   (crashed, timed_out, killed_by_limit, broken). Null for a worker without such a pool (every
--   flow it serves runs its handlers on threads), and for workers of releases before this one.
ALTER TABLE flowreg.workers ADD COLUMN IF NOT EXISTS handler_processes jsonb;
