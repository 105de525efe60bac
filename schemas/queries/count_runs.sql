-- How many runs list_run_summaries.sql lists with no limit, counted up to $3: the runs of the flow
-- $1, or of every flow slug that has runs when $1 is empty, with the status $2 ('' for all). Read
-- as the list reads them, one flow at a time through runs_by_flow, and never more than $3 entries
-- in all: a count of a long history would read every entry of its index. The caller asks for one
-- more than it shows ("more than N runs" when it gets them all).
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = '')
SELECT count(*)::bigint AS n FROM (SELECT 1 FROM listed l CROSS JOIN LATERAL (SELECT 1
  FROM flowreg.runs r
  WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
   AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2)
  LIMIT $3::int) r LIMIT $3::int) counted
