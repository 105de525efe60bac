-- flowreg migration 0033: behind a concurrency or rate limit (migrations 0023, 0024), priorities
-- order the keys' turns too: a claim visits the keys in one pass per priority level, highest
-- first, so that a high-priority task of any key comes before the lower-priority tasks of every
-- key (_claim_gated), as the queue without a gate is claimed (migration 0022).
--
-- tasks_gated puts `priority` before `gate`: a pass's skip scan reads the keys of its level in key
-- order (flow_slug, flow_version, priority, gate > the last), and a key's walk per level (gate =,
-- priority =, in available_at order up to its first task not yet due) reads the same prefix.
--
-- (Built again, not concurrently, as 0032 built it: the index holds the queued tasks with a gate
-- only, and the migration's transaction holds the table's lock for the time it takes. IF EXISTS:
-- a database may run this file again after its record was lost.)
DROP INDEX IF EXISTS flowreg.tasks_gated;
CREATE INDEX tasks_gated
  ON flowreg.tasks (flow_slug, flow_version, priority, gate, available_at)
  WHERE status = 'queued' AND gate IS NOT NULL;
