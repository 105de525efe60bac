-- After a round of retention that walked every batch of its time $1 (microseconds since 1970)
-- without an error (migration 0034): each stored flow's floor, the creation time of its oldest
-- run now, found by a walk of runs_by_flow up from its floor less a second (or from its oldest
-- entry, when the round walked every run: swept_at was an hour or more before $1, or never set)
-- stopped at the first run; and swept_at, $1 when the round walked every run. A flow without a run
-- gets $1: a run of it is created after the round began, save by a transaction open since before
-- (which the next round that walks every run removes in its time). The flows are those stored (a
-- skip scan of flows_pkey, one probe per slug), not only those with runs: a flow whose runs were
-- all removed keeps a floor, so that its next runs do not make a round walk from its oldest entry.
WITH RECURSIVE stored(slug) AS (
  (SELECT slug FROM flowreg.flows ORDER BY slug LIMIT 1)
  UNION ALL
  SELECT n.slug
  FROM stored s CROSS JOIN LATERAL (
    SELECT f.slug FROM flowreg.flows f WHERE f.slug > s.slug ORDER BY f.slug LIMIT 1) n
)
UPDATE flowreg.retention rt
SET floors = coalesce((
      SELECT jsonb_object_agg(s.slug, coalesce((
        SELECT r.created_at FROM flowreg.runs r
        WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(s.slug, 0)
          AND r.flow_slug = s.slug
          AND r.created_at >= CASE WHEN rt.swept_at > a.at - interval '1 hour'
                              THEN coalesce((rt.floors ->> s.slug)::timestamptz
                                            - interval '1 s', '-infinity')
                              ELSE '-infinity' END
        ORDER BY r.created_at LIMIT 1), a.at))
      FROM stored s), '{}'::jsonb),
    swept_at = CASE WHEN rt.swept_at > a.at - interval '1 hour' THEN rt.swept_at ELSE a.at END
FROM (SELECT 'epoch'::timestamptz + $1::bigint * interval '1 microsecond' AS at) a
WHERE rt.id = true
