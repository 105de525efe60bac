-- Deletes at most $2 events sent before $1 (microseconds since 1970), oldest first, through
-- events_by_time (migration 0026).
WITH gone AS (
 DELETE FROM flowreg.events WHERE id = ANY (ARRAY(
  SELECT e.id FROM flowreg.events e
  WHERE e.sent_at < 'epoch'::timestamptz + $1::bigint * interval '1 microsecond'
  ORDER BY e.sent_at LIMIT $2::int))
 RETURNING 1)
SELECT count(*) AS deleted FROM gone
