-- flowreg migration 0032: priorities order the queued tasks of a key, as they order the queue
-- without a gate (migration 0022): a claim of a gate (concurrency limits per key, migration 0023;
-- rate limits, 0024) takes a key's tasks highest priority first, then oldest.
--
-- tasks_gated gains `priority` before `available_at`: _claim_gated walks a key's tasks once per
-- level of the flow version (queue_levels), highest first, each walk in available_at order up to
-- its first task not yet due, so that a level's delayed tasks are never read through to reach the
-- next level, as in _claim. The skip scan over the keys reads the same prefix as before.
--
-- (Built again, not concurrently: the index holds the queued tasks with a gate only, and the
-- migration's transaction holds the table's lock for the time it takes. IF EXISTS: a database may
-- run this file again after its record was lost.)
DROP INDEX IF EXISTS flowreg.tasks_gated;
CREATE INDEX tasks_gated
  ON flowreg.tasks (flow_slug, flow_version, gate, priority, available_at)
  WHERE status = 'queued' AND gate IS NOT NULL;
