-- Deletes ended runs (with their steps and tasks) that finished before p_before: at most p_limit
-- of them (NULL: all), so that a caller deletes a long history in short transactions
-- (RunStore::prune: batches of kPruneBatch runs before one cutoff, until a call deletes fewer). One transaction
-- deleting a million runs runs for seconds (200,000 runs: 1.5 s, measured), and while it runs
-- VACUUM cannot clean anything newer than its start: the queue's dead rows and index entries pile
-- up under the workers' claims. Returns how many runs it deleted.
-- Old runs are found through runs_by_flow, one range per flow slug (_run_slugs; the hash of the
-- slug is the index's key since migration 0016; a run that finished before a time was created
-- before it; runs has no index on created_at alone since migration 0015); finished_at has no
-- index, so that completing a run stays a HOT update. Step states and tasks have no foreign key
-- to their run (see migration 0008): they are deleted here, by run id (tasks through
-- tasks_by_run), and a solo task by its run's task_id (migration 0013). An ended run's tasks have
-- left the queue already (migration 0009): these deletes are a safety net.
CREATE OR REPLACE FUNCTION flowreg.prune(p_before timestamptz, p_limit int)
RETURNS bigint LANGUAGE sql AS $$
  WITH d AS (
    DELETE FROM flowreg.runs
    WHERE id = ANY (ARRAY(
      SELECT o.id FROM flowreg._run_slugs() AS f(slug)
      CROSS JOIN LATERAL (SELECT r.id FROM flowreg.runs r
                          WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(f.slug, 0)
                            AND r.flow_slug = f.slug AND r.created_at < p_before
                            AND r.finished_at < p_before AND r.status <> 'started'
                          LIMIT p_limit) o
      LIMIT p_limit))
    RETURNING id, task_id
  ),
  s AS (DELETE FROM flowreg.step_states WHERE run_id = ANY (ARRAY(SELECT id FROM d))),
  t AS (DELETE FROM flowreg.tasks WHERE run_id = ANY (ARRAY(SELECT id FROM d)) AND NOT solo),
  solo AS (DELETE FROM flowreg.tasks WHERE id = ANY (ARRAY(SELECT task_id FROM d))
                                        AND run_id = ANY (ARRAY(SELECT id FROM d)))
  SELECT count(*) FROM d
$$;

-- Every run that ended more than p_older_than ago, in one call (the form of the releases before
-- batches, kept for their callers).
CREATE OR REPLACE FUNCTION flowreg.prune(p_older_than interval)
RETURNS bigint LANGUAGE sql AS $$
  SELECT flowreg.prune(now() - p_older_than, NULL)
$$;

ALTER FUNCTION flowreg.prune(timestamptz, int) SET jit = off;
ALTER FUNCTION flowreg.prune(interval) SET jit = off;
