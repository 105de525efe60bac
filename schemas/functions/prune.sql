-- Deletes ended runs (with their steps and tasks) that finished before now() - p_older_than.
-- Old runs are found through runs_by_flow, one range per flow slug (_run_slugs; the hash of the
-- slug is the index's key since migration 0016; a run that finished before a time was created
-- before it; runs has no index on created_at alone since migration 0015); finished_at has no
-- index, so that completing a run stays a HOT update. Step states and tasks have no foreign key
-- to their run (see migration 0008): they are deleted here, by run id (tasks through
-- tasks_by_run), and a solo task by its run's task_id (migration 0013). An ended run's tasks have
-- left the queue already (migration 0009): these deletes are a safety net.
CREATE OR REPLACE FUNCTION flowreg.prune(p_older_than interval)
RETURNS bigint LANGUAGE sql AS $$
  WITH d AS (
    DELETE FROM flowreg.runs
    WHERE id = ANY (ARRAY(
      SELECT o.id FROM flowreg._run_slugs() AS f(slug)
      CROSS JOIN LATERAL (SELECT r.id FROM flowreg.runs r
                          WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(f.slug, 0)
                            AND r.flow_slug = f.slug AND r.created_at < now() - p_older_than
                            AND r.finished_at < now() - p_older_than AND r.status <> 'started') o))
    RETURNING id, task_id
  ),
  s AS (DELETE FROM flowreg.step_states WHERE run_id = ANY (ARRAY(SELECT id FROM d))),
  t AS (DELETE FROM flowreg.tasks WHERE run_id = ANY (ARRAY(SELECT id FROM d)) AND NOT solo),
  solo AS (DELETE FROM flowreg.tasks WHERE id = ANY (ARRAY(SELECT task_id FROM d))
                                        AND run_id = ANY (ARRAY(SELECT id FROM d)))
  SELECT count(*) FROM d
$$;

ALTER FUNCTION flowreg.prune(interval) SET jit = off;
