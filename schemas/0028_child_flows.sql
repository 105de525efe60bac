-- flowreg migration 0028: flow steps, which start child runs (docs/flows.md#child-flows).
--
-- * A flow step (`kind: flow`, `flow: SLUG`) runs no handler: when it starts (_start_steps) it
--   starts a run of flow SLUG at the version stored last (_start_children), with the step's input
--   (or, kind flow_map: `map: true`, one run per element of its input array, in order); its state
--   is started, with one task counted per child run and none in the queue: the step holds no
--   task, lease or claim while its children run. flow_steps.child_flow: the slug it starts.
-- * runs.parent_run_id, parent_step, parent_index: a child run's parent run, the flow step that
--   started it and its element (0 for a flow step without map); runs.depth: how deep it is nested
--   (its parent's depth + 1; NULL, 0, for a run started otherwise: at most Child::kMaxDepth);
--   runs.has_children: the run started child runs. A child run's id is greater than its
--   parent's (start_runs: p_parent), so that a parent is locked before its children, as the lock
--   order of runs by id says (see schemas/functions/README.md).
-- * When a child run ends (the trigger runs_ended, _run_ended), it hands its end to its parent's
--   step as a task, queued for the parent's flow at the child's element, its input {run, flow,
--   status, output, error}: the worker that claims it completes the task with the child's output
--   or fails it (permanently) with the child's error. The parent is not locked by the child's end
--   (its lock comes before the child's), and its step ends as a map step's does when its last
--   task ends. When a run that has children ends otherwise (failed, cancelled), its started
--   children are cancelled, and theirs in turn.
--
-- (IF NOT EXISTS, and the columns of runs moved last again: a database may run this file again
-- after its record was lost, like 0020; migration 0018 run again moves its columns after these.
-- The trigger runs_ended reads two of them: it is dropped while they move, then made again as it
-- was.)
DO $$
DECLARE
  v_trigger text;
  c text;
BEGIN
  IF EXISTS (SELECT FROM pg_attribute a
             WHERE a.attrelid = 'flowreg.runs'::regclass AND a.attname = 'has_children'
               AND a.attnum < (SELECT max(l.attnum) FROM pg_attribute l
                               WHERE l.attrelid = 'flowreg.runs'::regclass AND l.attnum > 0
                                 AND NOT l.attisdropped)) THEN
    SELECT pg_get_triggerdef(t.oid) INTO v_trigger FROM pg_trigger t
    WHERE t.tgrelid = 'flowreg.runs'::regclass AND t.tgname = 'runs_ended';
    DROP TRIGGER IF EXISTS runs_ended ON flowreg.runs;
    FOREACH c IN ARRAY ARRAY['parent_run_id', 'parent_step', 'parent_index', 'depth',
                             'has_children'] LOOP
      EXECUTE format('ALTER TABLE flowreg.runs RENAME COLUMN %I TO %I', c, c || '_0027');
      EXECUTE format('ALTER TABLE flowreg.runs ADD COLUMN %I %s', c,
                     (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                      WHERE a.attrelid = 'flowreg.runs'::regclass AND a.attname = c || '_0027'));
      EXECUTE format('UPDATE flowreg.runs SET %I = %I WHERE %I IS NOT NULL', c, c || '_0027',
                     c || '_0027');
      EXECUTE format('ALTER TABLE flowreg.runs DROP COLUMN %I', c || '_0027');
    END LOOP;
    IF v_trigger IS NOT NULL THEN
      EXECUTE v_trigger;
    END IF;
  END IF;
END $$;
ALTER TABLE flowreg.flow_steps DROP CONSTRAINT IF EXISTS flow_steps_kind_check;
ALTER TABLE flowreg.flow_steps ADD CONSTRAINT flow_steps_kind_check
  CHECK (kind IN ('single', 'map', 'sleep', 'wait', 'flow', 'flow_map'));
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS child_flow text;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS parent_run_id uuid;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS parent_step text;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS parent_index int;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS depth int;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS has_children boolean;
-- A run's children, by its id (the cascade of a cancel, `runs show`): only child runs are in it.
CREATE INDEX IF NOT EXISTS runs_by_parent ON flowreg.runs (parent_run_id, parent_step, parent_index)
  WHERE parent_run_id IS NOT NULL;
