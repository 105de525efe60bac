-- Forgets the workers whose last heartbeat is more than $1 milliseconds old and that stopped or
-- are stale (as forget_worker.sql says); returns their ids. Reads the whole workers table: one row
-- per worker process ever started and not yet forgotten, which is what this trims.
DELETE FROM flowreg.workers w
 WHERE clock_timestamp() - w.last_heartbeat_at > $1::bigint * interval '1 millisecond'
   AND (w.stopped_at IS NOT NULL
        OR clock_timestamp() - w.last_heartbeat_at
             > 3 * coalesce(w.heartbeat_ms, 5000) * interval '1 millisecond')
 RETURNING w.id
