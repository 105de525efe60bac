-- flowreg migration 0005: columns for worker health.
--
-- * tasks.crashes: how many times a worker died while running the task's current attempt (a
--   worker starting later on the same data directory reports it); the task fails at a limit.
-- * workers.state: 'running', or 'stuck' when every handler thread is held by a handler that timed
--   out and never returned (the worker then claims nothing).
-- * workers.heartbeat_ms: the worker's heartbeat interval; whoever lists workers compares the
--   heartbeat's age with it.
ALTER TABLE flowreg.tasks ADD COLUMN crashes int NOT NULL DEFAULT 0;
ALTER TABLE flowreg.workers ADD COLUMN state text NOT NULL DEFAULT 'running';
ALTER TABLE flowreg.workers ADD COLUMN heartbeat_ms bigint;
