-- flowreg migration 0026: wait steps, signals and events (docs/flows.md#wait-steps).
--
-- * A wait step (`kind: wait`) runs no handler: it ends when its run gets the signal it waits for
--   (`signal: NAME`, sent to that one run: send_signal) or when an event it waits for is sent
--   whose data matches the values its `match` pointers read in its input (`event: NAME`:
--   send_event); the signal's or event's data is its output. While it waits its step state is
--   started and it holds no task, no lease and no claim; with a `timeout` it has one task, queued,
--   available when the timeout ends (as a sleep step's, migration 0025): the worker that claims it
--   then fails the step, or completes it with the step's `default` output. A delivery deletes that
--   task, claimed or not, so the signal or event wins until the timeout's result is written.
--   flow_steps.wait_signal / wait_event: what it waits for (one of the two, NULL for other kinds);
--   wait_match: the event's match, [{"at": event pointer, "event": its path, "run": the path of
--   the value it must equal in the step's input}] sorted by "at"; wait_timeout_ms.
-- * flowreg.signals: every signal sent, once per run and name (a second send is refused, or, with
--   the same idempotency key, answered with the first). step_slug is NULL while it is kept for a
--   wait step that has not started yet (_start_steps consumes it when the step starts).
-- * flowreg.event_waits: the wait steps waiting for an event now, by event and match key (an md5
--   of the match's pointers and the values they read: _match_key), so that an event finds the
--   runs it resumes by index, whatever the number of runs waiting for other values.
-- * flowreg.events: every event sent, with how many runs it resumed (idempotency key per name).
ALTER TABLE flowreg.flow_steps DROP CONSTRAINT IF EXISTS flow_steps_kind_check;
ALTER TABLE flowreg.flow_steps ADD CONSTRAINT flow_steps_kind_check
  CHECK (kind IN ('single', 'map', 'sleep', 'wait'));
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS wait_signal text;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS wait_event text;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS wait_match jsonb;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS wait_timeout_ms bigint;
-- The wait steps on an event (send_event reads their matches): few rows, by index.
CREATE INDEX IF NOT EXISTS flow_steps_by_event ON flowreg.flow_steps (wait_event)
  WHERE wait_event IS NOT NULL;

CREATE TABLE IF NOT EXISTS flowreg.signals (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  run_id uuid NOT NULL,
  name text NOT NULL,
  data jsonb NOT NULL,
  idempotency_key text,
  sent_at timestamptz NOT NULL DEFAULT now(),
  step_slug text,           -- the wait step that took it; NULL while kept for later
  consumed_at timestamptz,
  UNIQUE (run_id, name)
);

CREATE TABLE IF NOT EXISTS flowreg.event_waits (
  run_id uuid NOT NULL,
  step_slug text NOT NULL,
  event text NOT NULL,
  match_key text NOT NULL,
  match jsonb NOT NULL,     -- {event pointer: the value it waits for}, shown by `runs show`
  since timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (run_id, step_slug)
);
CREATE INDEX IF NOT EXISTS event_waits_by_match ON flowreg.event_waits (event, match_key);

CREATE TABLE IF NOT EXISTS flowreg.events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  data jsonb NOT NULL,
  idempotency_key text,
  sent_at timestamptz NOT NULL DEFAULT now(),
  resumed int NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_key ON flowreg.events (name, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
-- `runs prune` deletes the events sent before its cutoff, oldest first (RunStore::prune_events).
CREATE INDEX IF NOT EXISTS events_by_time ON flowreg.events (sent_at);
