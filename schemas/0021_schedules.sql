-- flowreg migration 0021: schedules, which start runs of a flow at the ticks of a cron expression.
--
-- One row per schedule, named; `next_fire_at` is its next tick not yet fired, computed by flowreg
-- (the cron expression in its time zone: core/src/schedule/cron.hpp), never by the database. A
-- worker serving the flow fires a due row (next_fire_at <= now()) through flowreg.fire_schedules:
-- it locks the row (SKIP LOCKED), checks that next_fire_at is still the tick it computed from,
-- starts the tick's run with the idempotency key 'schedule:<name>:<tick>' and advances the row,
-- all in one transaction: one run per tick, whatever the number of workers.
--
-- source: 'config:<module>' for a schedule declared in a configuration file (replaced when the
-- file changes, removed when the file no longer declares it), 'api' for one created at run time.
-- The table stays small (one row per schedule); the due walk is schedules_due below.
CREATE TABLE IF NOT EXISTS flowreg.schedules (
  name text PRIMARY KEY,
  flow_slug text NOT NULL,
  cron text NOT NULL,
  timezone text NOT NULL,
  input jsonb NOT NULL,
  time_key text NOT NULL,  -- '' when the tick's time is not put into the input
  catch_up text NOT NULL CHECK (catch_up IN ('none', 'latest', 'all')),
  catch_up_max int NOT NULL CHECK (catch_up_max BETWEEN 1 AND 1000),
  overlap text NOT NULL CHECK (overlap IN ('allow', 'skip', 'queue')),
  source text NOT NULL,
  paused boolean NOT NULL DEFAULT false,
  next_fire_at timestamptz,
  last_tick_at timestamptz,
  last_fired_at timestamptz,
  last_run_id uuid,
  last_outcome text,
  fired bigint NOT NULL DEFAULT 0,
  skipped bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS schedules_due ON flowreg.schedules (next_fire_at) WHERE NOT paused;
