-- flowreg migration 0012: a run of a one-step flow keeps its step's state in its own row.
--
-- A flow of one single step (the most common shape, and a queue job's equivalent) needs no
-- step_states row: its step starts with its run, ends with it, and its output is the run's
-- output ({step slug: output}). Such a run now stores the step's two own fields in runs:
-- * runs.attempts: the attempts of its task that are no longer queued or started (as
--   step_states.attempts; readers add those of its live task). NOT NULL marks a run of this
--   layout: start_runs sets it to 0 for a flow whose only step is a single step.
-- * runs.worker_id: the worker that recorded its task's last result (as step_states.worker_id).
-- Everything else of its step is derived: status from the run's, started_at from created_at,
-- finished_at, the output from the run's output, the error from the run's when failed.
--
-- Per run, the start writes 2 rows instead of 3 (no step state, no entry in its index), and the
-- completion writes the run once instead of the step state and then the run.
--
-- The view flowreg.steps shows every step state, of either layout, with step_states' columns:
-- it is what readers query (RunStore's run steps, tests, tools).
--
-- A running database upgrades in place: the live (started) runs of one-step flows move to the
-- new layout (their step state's attempts and worker go to the run, the row is deleted). Finished
-- runs keep their step_states row, which the view shows as before. (IF NOT EXISTS and
-- CREATE OR REPLACE: a database may run this file again after its record was lost, like 0007.)
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS attempts int;
ALTER TABLE flowreg.runs ADD COLUMN IF NOT EXISTS worker_id text;

WITH moving AS (
  SELECT s.run_id, s.attempts, s.worker_id
  FROM flowreg.runs r
  JOIN flowreg.step_states s ON s.run_id = r.id
  WHERE r.status = 'started' AND r.attempts IS NULL AND s.kind = 'single'
    AND (SELECT count(*) FROM flowreg.flow_steps fs
         WHERE fs.flow_slug = r.flow_slug AND fs.version = r.flow_version) = 1
),
moved AS (
  UPDATE flowreg.runs r SET attempts = m.attempts, worker_id = m.worker_id
  FROM moving m WHERE r.id = m.run_id
  RETURNING r.id
)
DELETE FROM flowreg.step_states s USING moved WHERE s.run_id = moved.id;

CREATE OR REPLACE VIEW flowreg.steps AS
  SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.status, s.remaining_deps,
         s.remaining_tasks, s.task_count, s.output, s.error, s.started_at, s.finished_at,
         s.attempts, s.worker_id
  FROM flowreg.step_states s
  UNION ALL
  SELECT r.id, fs.step_slug, fs.step_index, fs.kind, r.status, 0,
         CASE WHEN r.status = 'completed' THEN 0 ELSE 1 END, 1, r.output -> fs.step_slug,
         CASE WHEN r.status = 'failed' THEN r.error END, r.created_at, r.finished_at,
         r.attempts, r.worker_id
  FROM flowreg.runs r
  JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
  WHERE r.attempts IS NOT NULL;
