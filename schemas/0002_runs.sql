-- flowreg migration 0002: the tables of flows and their runs.
--
-- A flow version is stored once per (slug, version) in flows, with its steps (flow_steps) and its
-- dependency edges (flow_deps). A run (runs) is one execution of a flow version with an input; it
-- has one row per step in step_states and one row per unit of work in tasks (one task for a
-- single step, one per input element for a map step). A task copies its step's options (attempts,
-- retry delays, timeout) when it is created, so work already queued keeps the options it was
-- created with. Deleting a run deletes its steps and tasks.

-- Flow definitions, one per (slug, version). Runs point at the version they started with.
CREATE TABLE flowreg.flows (
  slug text NOT NULL,
  version text NOT NULL,
  definition jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (slug, version)
);

CREATE TABLE flowreg.flow_steps (
  flow_slug text NOT NULL,
  version text NOT NULL,
  step_slug text NOT NULL,
  step_index int NOT NULL,
  kind text NOT NULL CHECK (kind IN ('single', 'map')),
  handler text NOT NULL,
  deps text[] NOT NULL,
  is_leaf boolean NOT NULL,
  max_attempts int NOT NULL CHECK (max_attempts >= 1),
  base_delay_ms bigint NOT NULL CHECK (base_delay_ms >= 0),
  max_delay_ms bigint NOT NULL CHECK (max_delay_ms >= 0),
  timeout_ms bigint NOT NULL CHECK (timeout_ms >= 1),
  PRIMARY KEY (flow_slug, version, step_slug),
  FOREIGN KEY (flow_slug, version) REFERENCES flowreg.flows ON DELETE CASCADE
);

-- One row per edge: dep_slug must complete before step_slug starts.
CREATE TABLE flowreg.flow_deps (
  flow_slug text NOT NULL,
  version text NOT NULL,
  dep_slug text NOT NULL,
  step_slug text NOT NULL,
  PRIMARY KEY (flow_slug, version, dep_slug, step_slug),
  FOREIGN KEY (flow_slug, version, dep_slug) REFERENCES flowreg.flow_steps ON DELETE CASCADE,
  FOREIGN KEY (flow_slug, version, step_slug) REFERENCES flowreg.flow_steps ON DELETE CASCADE
);

CREATE TABLE flowreg.runs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  flow_slug text NOT NULL,
  flow_version text NOT NULL,
  status text NOT NULL DEFAULT 'started'
    CHECK (status IN ('started', 'completed', 'failed', 'cancelled')),
  input jsonb NOT NULL,
  output jsonb,
  error text,
  remaining_steps int NOT NULL,
  idempotency_key text,
  retry_of uuid REFERENCES flowreg.runs ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  FOREIGN KEY (flow_slug, flow_version) REFERENCES flowreg.flows
);
CREATE UNIQUE INDEX runs_idempotency ON flowreg.runs (flow_slug, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_flow ON flowreg.runs (flow_slug, created_at DESC);
CREATE INDEX runs_by_created ON flowreg.runs (created_at DESC);
CREATE INDEX runs_finished ON flowreg.runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX runs_retry_of ON flowreg.runs (retry_of) WHERE retry_of IS NOT NULL;

CREATE TABLE flowreg.step_states (
  run_id uuid NOT NULL REFERENCES flowreg.runs ON DELETE CASCADE,
  step_slug text NOT NULL,
  step_index int NOT NULL,
  kind text NOT NULL,
  status text NOT NULL DEFAULT 'created'
    CHECK (status IN ('created', 'started', 'completed', 'failed', 'cancelled')),
  remaining_deps int NOT NULL,
  remaining_tasks int NOT NULL DEFAULT 0,
  task_count int NOT NULL DEFAULT 0,
  output jsonb,
  error text,
  started_at timestamptz,
  finished_at timestamptz,
  PRIMARY KEY (run_id, step_slug)
);

CREATE TABLE flowreg.tasks (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  run_id uuid NOT NULL,
  step_slug text NOT NULL,
  task_index int NOT NULL,
  flow_slug text NOT NULL,
  flow_version text NOT NULL,
  status text NOT NULL DEFAULT 'queued'
    CHECK (status IN ('queued', 'started', 'completed', 'failed', 'cancelled')),
  attempt int NOT NULL DEFAULT 0,  -- attempts begun so far; the claim makes it 1 the first time
  max_attempts int NOT NULL,
  base_delay_ms bigint NOT NULL,
  max_delay_ms bigint NOT NULL,
  timeout_ms bigint NOT NULL,
  input jsonb NOT NULL,
  output jsonb,
  error text,        -- the last attempt's error
  error_at timestamptz,  -- when it was recorded (a retry's delay is available_at - error_at)
  worker_id text,    -- the last claimer
  available_at timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,  -- of the last attempt
  finished_at timestamptz,
  UNIQUE (run_id, step_slug, task_index),
  FOREIGN KEY (run_id, step_slug) REFERENCES flowreg.step_states ON DELETE CASCADE
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
-- The hot claim index holds queued tasks only: finished work leaves it (and vacuum removes the dead
-- entries), so a claim does not step over the history of completed tasks.
CREATE INDEX tasks_queued ON flowreg.tasks (flow_slug, flow_version, available_at)
  WHERE status = 'queued';
CREATE INDEX tasks_leased ON flowreg.tasks (lease_expires_at) WHERE status = 'started';

-- Runs and step states are updated a few times in their life: vacuumed once 2% of them are dead.
ALTER TABLE flowreg.runs SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE flowreg.step_states SET (autovacuum_vacuum_scale_factor = 0.02);
