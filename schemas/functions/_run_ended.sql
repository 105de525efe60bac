-- The trigger runs_ended (migration 0028, docs/flows.md#child-flows): when a child run or a run
-- with children ends (its status leaves started, whatever function ends it; its other updates
-- return at once).
-- * A child run hands its end to its parent's flow step: a task at its element, queued for the
--   parent's flow, its input {run, flow, status, output, error}; the worker that claims it
--   completes it with the child's output, or fails it (permanently) with the child's error. Only
--   while the parent and its step are started (a second end of the same element is ignored).
--   The parent run is read, not locked: its lock comes before its child's.
-- * A run with children that failed or was cancelled cancels its children still started (each
--   cancel_run, in id order: their own children in turn), then takes out of the queue the tasks
--   that children which ended meanwhile handed back to it (their ends committed before it locked
--   them, and so are seen by this later statement).
CREATE OR REPLACE FUNCTION flowreg._run_ended()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_n bigint;
BEGIN
  IF OLD.status <> 'started' OR NEW.status = 'started' THEN
    RETURN NULL;  -- not its end
  END IF;
  IF NEW.parent_run_id IS NOT NULL THEN
    WITH handed AS (
      INSERT INTO flowreg.tasks (run_id, step_slug, task_index, flow_slug, flow_version, input,
                                 timeout_ms, priority)
      SELECT p.id, NEW.parent_step, NEW.parent_index, p.flow_slug, p.flow_version,
             jsonb_build_object('run', NEW.id, 'flow', NEW.flow_slug, 'status', NEW.status,
                                'output', NEW.output, 'error', NEW.error),
             fs.timeout_ms, coalesce(p.priority, fs.priority)
      FROM flowreg.runs p
      CROSS JOIN LATERAL (SELECT f.timeout_ms, f.priority FROM flowreg.flow_steps f
                          WHERE f.flow_slug = p.flow_slug AND f.version = p.flow_version
                            AND f.step_slug = NEW.parent_step OFFSET 0) fs
      WHERE p.id = NEW.parent_run_id AND p.status = 'started'
        AND EXISTS (SELECT FROM flowreg.step_states s
                    WHERE s.run_id = p.id AND s.step_slug = NEW.parent_step
                      AND s.status = 'started')
      ON CONFLICT (run_id, step_slug, task_index) WHERE NOT solo DO NOTHING
      RETURNING flow_slug
    )
    SELECT count(pg_notify('flowreg_tasks', h.flow_slug)) INTO v_n FROM handed h;
  END IF;
  IF NEW.has_children AND NEW.status IN ('failed', 'cancelled') THEN
    PERFORM flowreg.cancel_run(c.id)
    FROM (SELECT r.id FROM flowreg.runs r
          WHERE r.parent_run_id = NEW.id AND r.status = 'started' ORDER BY r.id) c;
    DELETE FROM flowreg.tasks t WHERE t.run_id = NEW.id AND NOT t.solo;
  END IF;
  RETURN NULL;
END $$;

ALTER FUNCTION flowreg._run_ended() SET enable_seqscan = off SET jit = off;

-- Fired only for the rows of child runs and of runs with children (most runs are neither: their
-- updates evaluate this WHEN and queue nothing); whether the run has just ended is tested in the
-- function. The trigger names no column that a migration moves (as 0018 moves status: a trigger
-- on it would make that migration fail where it runs again), only the columns of migration 0028.
CREATE OR REPLACE TRIGGER runs_ended AFTER UPDATE ON flowreg.runs
  FOR EACH ROW
  WHEN (NEW.parent_run_id IS NOT NULL OR NEW.has_children)
  EXECUTE FUNCTION flowreg._run_ended();
