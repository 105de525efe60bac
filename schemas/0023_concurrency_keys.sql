-- flowreg migration 0023: concurrency limits per key. A flow's `concurrency: {limit, key}` bounds
-- its runs active at once with the same key; a step's, its tasks running at once with the same
-- key. The key is the text at a JSON pointer into the run's input ("" when the input has nothing
-- there, or when no pointer is given: one key for the whole flow or step).
--
-- * flow_steps.gate_prefix, gate_limit, gate_path: the gate of a step's tasks, NULL for none. A
--   step's own concurrency gives the prefix '<step slug>:'; a flow's gives its root steps the
--   prefix ':' (a run holds its slot from the claim of its first task to its end, so only the
--   tasks that start a run are gated). gate_path: the pointer as a path (#>>), NULL for one key.
-- * tasks.gate: the task's gate, prefix and key (_gate_of), written when the task is created
--   from its step's gate; NULL (every task of a step without concurrency) keeps the task in
--   tasks_queued, claimed as before. A gated task is claimed by _claim_gated only, key after key.
-- * gate_holders: the runs holding a slot of a flow's gate, one row per run, written when its
--   first task is claimed (runs.gate keeps the key too, for `runs show`). A row counts while its
--   run is started: its end frees the slot, and the next claim of the key deletes the row (under
--   the key's lock). Nothing else undoes a slot, so none is ever freed twice, and a SIGKILLed
--   worker's run keeps its slot until it ends (its task is requeued when the lease lapses,
--   ungated: the run holds the slot). No index of runs covers gate or status: a run's end stays
--   a HOT update, as it was.
-- * The count of a step's running tasks of a key is the count of its started tasks with that
--   gate (tasks_gate_running): a lapsed lease frees the slot when its task is requeued.
-- The columns are text COLLATE "C": _claim_gated walks the keys of a prefix as a byte range.
--
-- (IF NOT EXISTS, and the gate columns moved last again, as 0022 does: a database may run this
-- file again after its record was lost, after 0018 and 0022 moved their columns after these.
-- Dropping the old column drops the indexes on it, built again below.)
DO $$
DECLARE
  c regclass;
BEGIN
  FOREACH c IN ARRAY ARRAY['flowreg.runs'::regclass, 'flowreg.tasks'::regclass] LOOP
    IF EXISTS (SELECT FROM pg_attribute a
               WHERE a.attrelid = c AND a.attname = 'gate'
                 AND a.attnum < (SELECT max(l.attnum) FROM pg_attribute l
                                 WHERE l.attrelid = c AND l.attnum > 0 AND NOT l.attisdropped)) THEN
      EXECUTE format('ALTER TABLE %s RENAME COLUMN gate TO gate_0022', c);
      EXECUTE format('ALTER TABLE %s ADD COLUMN gate text COLLATE "C"', c);
      EXECUTE format('UPDATE %s SET gate = gate_0022 WHERE gate_0022 IS NOT NULL', c);
      EXECUTE format('ALTER TABLE %s DROP COLUMN gate_0022', c);
    END IF;
  END LOOP;
END $$;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS gate_prefix text COLLATE "C";
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS gate_limit int;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS gate_path text[];
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS gate text COLLATE "C";
ALTER TABLE flowreg.tasks ADD COLUMN IF NOT EXISTS gate text COLLATE "C";

-- The ungated queue: tasks_queued as in 0022, of the tasks without a gate.
DROP INDEX IF EXISTS flowreg.tasks_queued;
CREATE INDEX tasks_queued ON flowreg.tasks
  (hashtextextended(flow_slug || ' ' || flow_version, 0), priority, available_at)
  WHERE status = 'queued' AND gate IS NULL;
-- The gated queues, one per key, oldest first; and the keys' running tasks and active runs.
CREATE INDEX IF NOT EXISTS tasks_gated
  ON flowreg.tasks (flow_slug, flow_version, gate, available_at)
  WHERE status = 'queued' AND gate IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_gate_running ON flowreg.tasks (flow_slug, gate)
  WHERE status = 'started' AND gate IS NOT NULL;
CREATE TABLE IF NOT EXISTS flowreg.gate_holders (
  flow_slug text NOT NULL,
  gate text COLLATE "C" NOT NULL,
  run_id uuid NOT NULL,
  PRIMARY KEY (flow_slug, gate, run_id)
);
-- The gated steps of a flow version: a claim's probe (is any flow served gated?) reads no row of a
-- flow without a gate, however many steps it has.
CREATE INDEX IF NOT EXISTS flow_steps_gated ON flowreg.flow_steps (flow_slug, version)
  WHERE gate_prefix IS NOT NULL;
