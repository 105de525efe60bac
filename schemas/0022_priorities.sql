-- flowreg migration 0022: priorities. A task is claimed highest priority first, then oldest
-- (available_at), among the ready tasks of the flows a worker serves.
--
-- * flow_steps.priority: the step's priority, from its flow's options (`priority:`, default 0,
--   -100..100; a step may set its own). Like the timeout, a new value applies to the tasks created
--   from then on (upsert_flow updates it without a new version: it is an option, not the shape).
-- * runs.priority: a run's own priority, given when it was started (`flowreg run --priority`, the
--   API's `priority`), which every task of the run takes instead of its step's; NULL (every run
--   but those, and every run started before this migration): its steps' priorities.
-- * tasks.priority: the task's priority, copied when the task is created (coalesce(run's, step's)),
--   and never changed by the hot path: the column is the last of tasks, in the unchanged suffix
--   of a claim's or a completion's update (migration 0018), and 4 bytes that the row's alignment
--   padding mostly absorbs.
-- * queue_levels: the priorities that a flow version's tasks may have (its steps' priorities, 0,
--   and every priority a run of it was started with), written by upsert_flow and by a start with
--   a priority, never on the hot path. A claim walks tasks_queued once per level, highest first,
--   each walk stopping at its first task not yet due: a level's delayed tasks (a delayed start, a
--   retry's backoff) are never read through to reach the next level, as one walk in (priority,
--   available_at) order would. A flow that uses no priority has the one level 0: one walk, as
--   before.
-- * tasks_queued: (hash of slug and version, priority, available_at), of queued tasks.
--
-- (IF NOT EXISTS, and columns moved last again: a database may run this file again after its
-- record was lost, like 0020; migration 0018 run again moves its columns after these.)
DO $$
DECLARE
  c record;
BEGIN
  FOR c IN SELECT * FROM (VALUES ('flowreg.runs'::regclass, 'int'),
                                 ('flowreg.tasks'::regclass, 'int NOT NULL DEFAULT 0')) v(tbl, typ)
  LOOP
    IF EXISTS (SELECT FROM pg_attribute a
               WHERE a.attrelid = c.tbl AND a.attname = 'priority'
                 AND a.attnum < (SELECT max(l.attnum) FROM pg_attribute l
                                 WHERE l.attrelid = c.tbl AND l.attnum > 0
                                   AND NOT l.attisdropped)) THEN
      EXECUTE format('ALTER TABLE %s RENAME COLUMN priority TO priority_0021', c.tbl);
      EXECUTE format('ALTER TABLE %s ADD COLUMN priority %s', c.tbl, c.typ);
      EXECUTE format('UPDATE %s SET priority = priority_0021 WHERE priority_0021 IS NOT NULL',
                     c.tbl);
      EXECUTE format('ALTER TABLE %s DROP COLUMN priority_0021', c.tbl);
    END IF;
  END LOOP;
END $$;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS priority int;
ALTER TABLE flowreg.tasks ADD COLUMN IF NOT EXISTS priority int NOT NULL DEFAULT 0;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS priority int NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS flowreg.queue_levels (
  flow_slug text NOT NULL,
  flow_version text NOT NULL,
  priority int NOT NULL,
  PRIMARY KEY (flow_slug, flow_version, priority),
  FOREIGN KEY (flow_slug, flow_version) REFERENCES flowreg.flows ON DELETE CASCADE
);
INSERT INTO flowreg.queue_levels (flow_slug, flow_version, priority)
SELECT DISTINCT fs.flow_slug, fs.version, fs.priority FROM flowreg.flow_steps fs
ON CONFLICT DO NOTHING;

DROP INDEX IF EXISTS flowreg.tasks_queued;
CREATE INDEX tasks_queued ON flowreg.tasks
  (hashtextextended(flow_slug || ' ' || flow_version, 0), priority, available_at)
  WHERE status = 'queued';
