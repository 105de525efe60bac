-- The walk of prune and retain: deletes the ended runs whose time is up, at most p_limit of them,
-- with what they keep elsewhere (_delete_runs). A run of flow p_slugs[i] is up when it is
-- completed, failed or cancelled and finished before p_completed[i], p_failed[i] or
-- p_cancelled[i] (NULL: never). p_slugs is in byte order. Returns how many runs it deleted, and
-- where the next batch of the same cutoffs starts: the flow slug of the last run deleted and the
-- creation time of the oldest run it deleted of that flow (NULL when it deleted none).
-- Old runs are found through runs_by_flow, one range per flow slug (_run_slugs gives the slugs;
-- the hash of the slug is the index's key since migration 0016; a run that finished before a
-- time was created before it; runs has no index on created_at alone since migration 0015), newest
-- first from the flow's latest cutoff; finished_at has no index, so that completing a run stays
-- a HOT update, and so the runs not due among them are read and skipped. A batch given where the
-- previous one ended (p_slug, p_created: flows from p_slug on, and that flow's runs created at or
-- before p_created) does not read again the runs the previous batches skipped: the batches of one
-- set of cutoffs read each of its runs once (and again only those created at the very time a
-- batch ended, a start_runs() call's, which share their created_at), where each batch started
-- from the top read every run not due again (a 90,000-run backlog of started runs: 92,664 rows
-- read per batch). The batch's runs are the first rows of that walk (a nested loop over the slugs
-- in order, each range in index order, stopped at p_limit): were they not, the next batch would
-- only skip runs that the next batch's walk deletes. p_floors[i] (NULL, or a NULL array: none)
-- bounds flow i's walk from below: its runs created before it are not read (retain's floors,
-- migration 0034), so that the entries of the runs earlier rounds deleted, which a held snapshot
-- keeps in the index, are not stepped over again.
CREATE OR REPLACE FUNCTION flowreg._remove_ended(p_slugs text[], p_completed timestamptz[],
                                                 p_failed timestamptz[],
                                                 p_cancelled timestamptz[], p_floors timestamptz[],
                                                 p_limit int, p_slug text, p_created timestamptz,
                                                 OUT deleted bigint, OUT last_slug text,
                                                 OUT last_created timestamptz)
LANGUAGE sql AS $$
  WITH f AS MATERIALIZED (
    SELECT u.slug, u.c, u.x, u.k, greatest(u.c, u.x, u.k) AS top,
           coalesce(u.floor, '-infinity') AS floor
    FROM unnest(p_slugs, p_completed, p_failed, p_cancelled, p_floors)
         AS u(slug, c, x, k, floor)
    WHERE (p_slug IS NULL OR u.slug >= p_slug) AND greatest(u.c, u.x, u.k) IS NOT NULL
    ORDER BY u.slug
  ),
  picked AS MATERIALIZED (
    SELECT o.id, f.slug, o.created_at
    FROM f CROSS JOIN LATERAL (
      SELECT r.id, r.created_at FROM flowreg.runs r
      WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(f.slug, 0)
        AND r.flow_slug = f.slug AND r.created_at < f.top AND r.created_at >= f.floor
        AND r.created_at <= CASE WHEN f.slug = p_slug THEN coalesce(p_created, 'infinity')
                                 ELSE 'infinity' END
        AND ((r.status = 'completed' AND r.finished_at < f.c)
             OR (r.status = 'failed' AND r.finished_at < f.x)
             OR (r.status = 'cancelled' AND r.finished_at < f.k))
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

-- Bitmap scans off: a bitmap scan of runs_by_flow reads every entry of a flow's range before its
-- first row (then sorts them), where the index scan stops after p_limit rows.
ALTER FUNCTION flowreg._remove_ended(text[], timestamptz[], timestamptz[], timestamptz[],
                                     timestamptz[], int, text, timestamptz)
  SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
