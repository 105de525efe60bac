-- Forgets worker $1: deletes its row when it stopped, or when it is stale (no heartbeat for three
-- of its intervals, 5 s when it reported none: what app::worker_status calls stale). forgotten:
-- whether it did; known: whether the worker was listed (a running worker is not forgotten). By
-- primary key.
WITH gone AS (
  DELETE FROM flowreg.workers w
  WHERE w.id = $1
    AND (w.stopped_at IS NOT NULL
         OR clock_timestamp() - w.last_heartbeat_at
              > 3 * coalesce(w.heartbeat_ms, 5000) * interval '1 millisecond')
  RETURNING w.id)
SELECT EXISTS (SELECT FROM gone) AS forgotten,
 EXISTS (SELECT FROM flowreg.workers w WHERE w.id = $1) AS known
