-- flowreg migration 0024: rate limits per key. A flow's or a step's `rate_limit: {limit, per, key}`
-- lets at most `limit` of its tasks start per `per` with the same key: a token bucket per key, of
-- `limit` tokens, refilled at limit/per, one token per task claimed (docs/flows.md#rate-limits).
--
-- * A rate-limited step's tasks are gated (migration 0023): its gate prefix is '|<step>:' unless a
--   concurrency limit gates it already, and its gate's key is the concurrency limit's key, else the
--   rate limit's. The '|' (above every character of a step's slug or ':') keeps its started
--   tasks out of tasks_gate_running, rebuilt here `WHERE gate < '|'`: a gate without a
--   concurrency limit counts no running task, and its claim writes no entry there.
--   _claim_gated claims them key after key, as many as the key's free slots and its bucket's
--   tokens allow; a task waiting for a token stays queued: no attempt is spent.
-- * flow_steps.rate_limit, rate_per_ms: the limit and its period; NULL for none. rate_scope: whose
--   bucket, '' for the flow's limit (shared by its steps), the step's slug for a step's own.
--   rate_keyed: the bucket's key is the gate's key; false: one bucket for the step or the flow
--   (a concurrency limit's key with a rate limit without one; refused when the keys differ).
-- * rate_buckets: the tokens of a bucket at `at`, per flow (over all its versions), scope and key;
--   no row: a full bucket. Written by the claim that takes its tokens, under an advisory lock of
--   the bucket (see _claim_gated: a bucket per key is skipped when another claim holds it; the
--   one bucket of a limit without a key is waited for).
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS rate_limit int;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS rate_per_ms bigint;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS rate_scope text COLLATE "C";
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS rate_keyed boolean;
CREATE TABLE IF NOT EXISTS flowreg.rate_buckets (
  flow_slug text NOT NULL,
  scope text COLLATE "C" NOT NULL,
  key text COLLATE "C" NOT NULL,
  tokens double precision NOT NULL,
  at timestamptz NOT NULL,
  PRIMARY KEY (flow_slug, scope, key)
);

-- The running tasks of the gates with a concurrency limit (migration 0023), without those of a
-- rate limit alone ('|<step>:'); the statements that count them say `gate < '|'` too.
DROP INDEX IF EXISTS flowreg.tasks_gate_running;
CREATE INDEX tasks_gate_running ON flowreg.tasks (flow_slug, gate)
  WHERE status = 'started' AND gate IS NOT NULL AND gate < '|';
