-- flowreg migration 0029: retention that runs itself (docs/operations.md#retention).
--
-- * flowreg.retention: one row, what the workers' retention did (worker/retainer.hpp): rounds,
--   runs and events removed in all, and the last round's end, length, runs removed, worker and
--   error. Written by the worker that holds the retention lock, after each round, in one short
--   statement; read by `flowreg db health` and the metrics. The deletes themselves are
--   flowreg.retain's batches (schemas/functions/retain.sql).
CREATE TABLE IF NOT EXISTS flowreg.retention (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  rounds bigint NOT NULL DEFAULT 0,
  runs_removed bigint NOT NULL DEFAULT 0,
  events_removed bigint NOT NULL DEFAULT 0,
  last_at timestamptz,
  last_ms bigint,
  last_runs bigint,
  last_worker text,
  last_error text
);
INSERT INTO flowreg.retention (id) VALUES (true) ON CONFLICT (id) DO NOTHING;
