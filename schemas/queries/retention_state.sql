-- What retention did (migration 0029), with the creation time of the oldest run kept (one probe
-- of runs_by_flow per flow slug, oldest first: _run_slugs; from the flow's floor less a second
-- when retention walked every run within the hour, migration 0034, so that the entries of the
-- runs retention deleted, which a held snapshot keeps in the index, are not stepped over at each
-- reading) and whether a session holds the retention lock ($1) now.
SELECT t.rounds, t.runs_removed, t.events_removed,
 coalesce((extract(epoch FROM t.last_at) * 1000000)::bigint, -1) AS last_at_us,
 coalesce(t.last_ms, -1) AS last_ms, coalesce(t.last_runs, -1) AS last_runs,
 coalesce(t.last_worker, '') AS last_worker, coalesce(t.last_error, '') AS last_error,
 coalesce((SELECT (extract(epoch FROM min(o.created_at)) * 1000000)::bigint
  FROM flowreg._run_slugs() AS s(slug) CROSS JOIN LATERAL (
   SELECT r.created_at FROM flowreg.runs r
   WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(s.slug, 0) AND r.flow_slug = s.slug
    AND r.created_at >= CASE WHEN t.swept_at > now() - interval '1 hour'
                        THEN coalesce((t.floors ->> s.slug)::timestamptz - interval '1 s',
                                      '-infinity')
                        ELSE '-infinity' END
   ORDER BY r.created_at LIMIT 1) o), -1) AS oldest_run_us,
 EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.objsubid = 1
  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint) AS running,
 (extract(epoch FROM now()) * 1000000)::bigint AS now_us
 FROM flowreg.retention t
