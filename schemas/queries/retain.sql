-- A batch of retention (schemas/functions/retain.sql) at the time $1 (microseconds since 1970),
-- with the default ages $2, $3, $4 (milliseconds; NULL: keep) of completed, failed and cancelled
-- runs, at most $5 runs, after the previous batch, which ended in flow $6 at a run created at $7
-- (microseconds since 1970; '' and -1 for the first batch).
SELECT p.deleted, coalesce(p.last_slug, '') AS last_slug,
 coalesce((extract(epoch FROM p.last_created) * 1000000)::bigint, -1) AS last_created_us
 FROM flowreg.retain('epoch'::timestamptz + $1::bigint * interval '1 microsecond',
 $2::bigint, $3::bigint, $4::bigint, $5::int, NULLIF($6, ''), CASE WHEN $7::bigint >= 0
 THEN 'epoch'::timestamptz + $7::bigint * interval '1 microsecond' END) AS p
