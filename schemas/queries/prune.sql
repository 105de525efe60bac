-- A batch of a cutoff ($1) after the previous one, which ended in flow $3 at a run created at $4
-- (microseconds since 1970; '' and -1 for the first batch): see schemas/functions/prune.sql.
SELECT p.deleted, coalesce(p.last_slug, '') AS last_slug,
 coalesce((extract(epoch FROM p.last_created) * 1000000)::bigint, -1) AS last_created_us
 FROM flowreg.prune('epoch'::timestamptz + $1::bigint * interval '1 microsecond', $2::int,
 NULLIF($3, ''), CASE WHEN $4::bigint >= 0
 THEN 'epoch'::timestamptz + $4::bigint * interval '1 microsecond' END) AS p
