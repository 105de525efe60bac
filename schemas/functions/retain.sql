-- Retention (docs/operations.md#retention): deletes the ended runs whose time is up, at most
-- p_limit of them, with what they keep in other tables (_delete_runs). A run's time is up when it
-- finished more than its flow's age for its status before p_at: the flow's `retention` (stored in
-- its definition, version stored last: {"completed_ms", "failed_ms", "cancelled_ms"}, each a
-- number of milliseconds, or null to keep such runs) where it says, else the caller's default
-- (p_completed_ms, p_failed_ms, p_cancelled_ms; NULL: keep). A run still started is never deleted.
-- Returns how many runs it deleted and where the next batch of the same p_at starts, as prune
-- does (p_slug, p_created: the flow slug of the last run deleted and the creation time of the
-- oldest run it deleted of that flow; NULL when it deleted none).
-- The walk is prune's: one range of runs_by_flow per flow slug (_run_slugs), newest first from the
-- latest cutoff of the flow's three (a run created after it cannot have finished before it), so
-- that a run not deleted (running, or kept longer for its status) is read once per cutoff, and the
-- batches of one p_at read each run once.
CREATE OR REPLACE FUNCTION flowreg.retain(p_at timestamptz, p_completed_ms bigint,
                                          p_failed_ms bigint, p_cancelled_ms bigint, p_limit int,
                                          p_slug text, p_created timestamptz, OUT deleted bigint,
                                          OUT last_slug text, OUT last_created timestamptz)
LANGUAGE sql AS $$
  WITH f AS MATERIALIZED (
    SELECT a.slug, a.c, a.x, a.k, greatest(a.c, a.x, a.k) AS top
    FROM (
      SELECT s.slug,
             p_at - CASE WHEN d.r ? 'completed_ms' THEN (d.r ->> 'completed_ms')::bigint
                         ELSE p_completed_ms END * interval '1 ms' AS c,
             p_at - CASE WHEN d.r ? 'failed_ms' THEN (d.r ->> 'failed_ms')::bigint
                         ELSE p_failed_ms END * interval '1 ms' AS x,
             p_at - CASE WHEN d.r ? 'cancelled_ms' THEN (d.r ->> 'cancelled_ms')::bigint
                         ELSE p_cancelled_ms END * interval '1 ms' AS k
      FROM flowreg._run_slugs() AS s(slug)
      LEFT JOIN LATERAL (
        SELECT coalesce(fl.definition -> 'retention', '{}'::jsonb) AS r FROM flowreg.flows fl
        WHERE fl.slug = s.slug ORDER BY fl.created_at DESC LIMIT 1) d0 ON true
      CROSS JOIN LATERAL (SELECT coalesce(d0.r, '{}'::jsonb) AS r) d
      WHERE p_slug IS NULL OR s.slug >= p_slug) a
    WHERE greatest(a.c, a.x, a.k) IS NOT NULL
    ORDER BY a.slug
  ),
  picked AS MATERIALIZED (
    SELECT o.id, f.slug, o.created_at
    FROM f CROSS JOIN LATERAL (
      SELECT r.id, r.created_at FROM flowreg.runs r
      WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(f.slug, 0)
        AND r.flow_slug = f.slug AND r.created_at < f.top
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

-- Index scans only, as prune's walk (see prune.sql).
ALTER FUNCTION flowreg.retain(timestamptz, bigint, bigint, bigint, int, text, timestamptz)
  SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
