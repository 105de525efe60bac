-- flowreg migration 0003: the workers table.
--
-- One row per worker process (its id is unique per process): where it runs, the flow versions it
-- claims tasks for and how many handlers it runs at once, its last heartbeat, and when it stopped
-- (NULL while it runs or when it died without saying so).
CREATE TABLE flowreg.workers (
  id text PRIMARY KEY,
  host text NOT NULL,
  pid int NOT NULL,
  flows jsonb NOT NULL DEFAULT '[]',  -- [{"slug", "version"}] it claims for
  concurrency int NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
  stopped_at timestamptz
);
