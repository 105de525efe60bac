-- flowreg migration 0016: the queue and the runs of a flow are indexed by a hash of the flow's
-- names, not by the names.
--
-- Every run inserts an entry into tasks_queued, keyed by its task's flow slug and version, and
-- into runs_by_flow, keyed by its flow slug. Those keys are text: a slug of 12 characters and a
-- version (16 hex digits) made a tasks_queued entry of 48 bytes and a runs_by_flow entry of 32. A
-- 64-bit hash of the same text (hashtextextended, seed 0) makes them 24 bytes each: per
-- single-step run, 1,225-1,232 bytes of WAL before, 1,195-1,199 after (tasks_queued 100 -> 75 B,
-- runs_by_flow 89 -> 80 B; bench/work_cost.sh --flow single --wal, batches 64 and 512), and the
-- entries of the two indexes are a half and three quarters of their former size.
-- * tasks_queued: (hash of slug || ' ' || version, available_at), of queued tasks. A claim and
--   work()'s look for the next due task give the hash of the flow they serve and check the slug
--   and version on the row as well, so that two flows whose hashes were equal are told apart (the
--   index is walked in available_at order within a hash, as it was within a flow version).
-- * runs_by_flow: (hash of slug, created_at DESC). Readers of a flow's runs (the lists of runs,
--   the metrics' count of runs started, prune) give the hash of the slug and check the slug.
--   _run_slugs finds the hashes that have runs by a skip scan of this index, as it found the slugs
--   (one probe per flow that has runs), and gives back their slugs.
-- The hash is PostgreSQL's own hash of text (the one hash partitioning uses, kept stable across
-- releases) and IMMUTABLE, as an index expression must be. The functions and RunStore write the
-- expressions exactly as here, so that the planner matches them to the indexes.
--
-- Nothing moves: the two indexes are built again over the rows there are. The upgrade locks tasks
-- and runs against writes while it builds them (as 0013 did), longer the longer the queue and the
-- history; workers and starts wait for it. A process of the previous release still running
-- afterwards reads lists of runs with SQL that names the slug only, which cannot use the new
-- runs_by_flow (it reads all of runs per list) until it is restarted; its claims go through the
-- function files, which this release replaces in the same upgrade.
-- (IF EXISTS: a database may run this file again after its record was lost, like 0007.)
DROP INDEX IF EXISTS flowreg.tasks_queued;
CREATE INDEX tasks_queued ON flowreg.tasks
  (hashtextextended(flow_slug || ' ' || flow_version, 0), available_at)
  WHERE status = 'queued';

DROP INDEX IF EXISTS flowreg.runs_by_flow;
CREATE INDEX runs_by_flow ON flowreg.runs (hashtextextended(flow_slug, 0), created_at DESC);
