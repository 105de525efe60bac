-- Deletes ended runs (with their steps and tasks) that finished before p_before: at most p_limit
-- of them (NULL: all), so that a caller deletes a long history in short transactions
-- (RunStore::prune: batches of kPruneBatch runs before one cutoff, until a call deletes fewer).
-- One transaction deleting a million runs runs for seconds (200,000 runs: 1.5 s, measured), and
-- while it runs VACUUM cannot clean anything newer than its start: the queue's dead rows and index
-- entries pile up under the workers' claims. Returns how many runs it deleted, and where the next
-- batch of the same cutoff starts: the flow slug of the last run deleted and the creation time of
-- the oldest run it deleted of that flow (NULL when it deleted none).
-- Old runs are found through runs_by_flow, one range per flow slug (_run_slugs; the hash of the
-- slug is the index's key since migration 0016; a run that finished before a time was created
-- before it; runs has no index on created_at alone since migration 0015), newest first; finished_at
-- has no index, so that completing a run stays a HOT update, and so the runs not ended among them
-- are read and skipped. A batch given where the previous one ended (p_slug, p_created: flows from
-- p_slug on, and that flow's runs created at or before p_created) does not read again the runs the
-- previous batches skipped: a cutoff's batches read each of its runs once (and again only those
-- created at the very time a batch ended, a start_runs() call's, which share their created_at),
-- where each batch started from the top read every run not ended again (a 90,000-run backlog of
-- started runs: 92,664 rows read per batch). The batch's runs are the first rows of that walk
-- (a nested loop over the slugs in order, each range in index order, stopped at p_limit): were
-- they not, the next batch would only skip runs that the next cutoff deletes.
-- The batch's runs are deleted, with what they keep in other tables, by _delete_runs.
CREATE OR REPLACE FUNCTION flowreg.prune(p_before timestamptz, p_limit int, p_slug text,
                                         p_created timestamptz, OUT deleted bigint,
                                         OUT last_slug text, OUT last_created timestamptz)
LANGUAGE sql AS $$
  WITH f AS MATERIALIZED (
    SELECT s.slug FROM flowreg._run_slugs() AS s(slug) WHERE p_slug IS NULL OR s.slug >= p_slug
  ),
  picked AS MATERIALIZED (
    SELECT o.id, f.slug, o.created_at
    FROM f CROSS JOIN LATERAL (
      SELECT r.id, r.created_at FROM flowreg.runs r
      WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(f.slug, 0)
        AND r.flow_slug = f.slug AND r.created_at < p_before
        AND r.created_at <= CASE WHEN f.slug = p_slug THEN coalesce(p_created, 'infinity')
                                 ELSE 'infinity' END
        AND r.finished_at < p_before AND r.status <> 'started'
      ORDER BY r.created_at DESC
      LIMIT p_limit) o
    LIMIT p_limit
  ),
  last AS (
    SELECT p.slug, min(p.created_at) AS created_at FROM picked p
    WHERE p.slug = (SELECT max(q.slug) FROM picked q) GROUP BY p.slug
  )
  SELECT flowreg._delete_runs(ARRAY(SELECT id FROM picked)), (SELECT l.slug FROM last l),
         (SELECT l.created_at FROM last l)
$$;

-- The first batch of a cutoff (the form callers used before batches had positions).
CREATE OR REPLACE FUNCTION flowreg.prune(p_before timestamptz, p_limit int)
RETURNS bigint LANGUAGE sql AS $$
  SELECT p.deleted FROM flowreg.prune(p_before, p_limit, NULL, NULL) AS p
$$;

-- Every run that ended more than p_older_than ago, in one call (the form of the releases before
-- batches, kept for their callers).
CREATE OR REPLACE FUNCTION flowreg.prune(p_older_than interval)
RETURNS bigint LANGUAGE sql AS $$
  SELECT flowreg.prune(now() - p_older_than, NULL)
$$;

-- Bitmap scans off: a bitmap scan of runs_by_flow reads every entry of a flow's range before its
-- first row (then sorts them), where the index scan stops after p_limit rows.
ALTER FUNCTION flowreg.prune(timestamptz, int, text, timestamptz)
  SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
ALTER FUNCTION flowreg.prune(timestamptz, int) SET jit = off;
ALTER FUNCTION flowreg.prune(interval) SET jit = off;
