-- How many runs list_run_summaries.sql lists with no limit and no cursor, counted up to $3: the
-- runs of the flow $1, or of every flow slug that has runs when $1 is empty, with the status $2
-- ('' for all), created in [$4, $5) (microseconds since the epoch; NULL: unbounded), whose input
-- holds the text $6 ('' for any; searched as list_run_summaries.sql searches it: among the newest
-- 10,000 runs of each flow, in inputs of at most 16 KiB as stored). Read as the list reads them,
-- one flow at a time through runs_by_flow, and never more than $3 entries in all: a count of a
-- long history would read every entry of its index. The caller asks for one more than it shows
-- ("more than N runs" when it gets them all).
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = ''),
k AS (SELECT
   coalesce(timestamptz 'epoch' + $4::bigint * interval '1 microsecond', '-infinity') AS since,
   coalesce(timestamptz 'epoch' + $5::bigint * interval '1 microsecond', 'infinity') AS until)
SELECT count(*)::bigint AS n FROM (SELECT 1 FROM k, listed l CROSS JOIN LATERAL (SELECT 1
  FROM (SELECT r.input FROM flowreg.runs r
   WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
    AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2
      OR ($2 = 'scheduled' AND r.status = 'started' AND r.start_at > now()))
    AND r.created_at >= k.since AND r.created_at < k.until
   ORDER BY r.created_at DESC
   LIMIT CASE WHEN $6 = '' THEN $3::int ELSE 10000 END) c
  WHERE $6 = '' OR (pg_column_size(c.input) <= 16384
                    AND strpos(lower(c.input::text), lower($6)) > 0)
  LIMIT $3::int) r LIMIT $3::int) counted
