-- Who holds VACUUM back (`flowreg db health`, docs/operations.md#who-holds-vacuum-back): what keeps
-- an old transaction id or snapshot, its age in transactions first, at most $1 rows. Sessions of
-- this database with a snapshot or a transaction (backend_xmin, backend_xid; this one aside: it
-- has a snapshot while it reads), prepared transactions, replication slots (xmin, catalog_xmin)
-- and standbys whose hot_standby_feedback reports an xmin. since_us: when the transaction (or the
-- prepared one) started, -1 when unknown; query: a session's first 300 characters. A role
-- without pg_read_all_stats sees other roles' sessions without their query ('<insufficient
-- privilege>').
SELECT h.* FROM (
 SELECT 'session' AS kind, a.pid::text AS name, coalesce(a.application_name, '') AS application,
  coalesce(a.usename::text, '') AS who, coalesce(a.client_addr::text, '') AS client,
  coalesce(a.state, '') AS state,
  greatest(coalesce(age(a.backend_xmin), 0), coalesce(age(a.backend_xid), 0))::bigint AS xmin_age,
  coalesce((extract(epoch FROM a.xact_start) * 1000000)::bigint, -1) AS since_us,
  left(coalesce(a.query, ''), 300) AS query
 FROM pg_stat_activity a
 WHERE a.pid <> pg_backend_pid() AND (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
  AND (a.datname = current_database() OR a.datname IS NULL)
 UNION ALL
 SELECT 'prepared', p.gid, '', p.owner::text, '', 'prepared', age(p.transaction)::bigint,
  (extract(epoch FROM p.prepared) * 1000000)::bigint, ''
 FROM pg_prepared_xacts p
 UNION ALL
 SELECT 'slot', s.slot_name::text, s.slot_type, '', '', CASE WHEN s.active THEN 'active'
  ELSE 'inactive' END,
  greatest(coalesce(age(s.xmin), 0), coalesce(age(s.catalog_xmin), 0))::bigint, -1, ''
 FROM pg_replication_slots s WHERE s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL
 UNION ALL
 SELECT 'standby', r.pid::text, coalesce(r.application_name, ''), coalesce(r.usename::text, ''),
  coalesce(r.client_addr::text, ''), coalesce(r.state, ''), age(r.backend_xmin)::bigint,
  coalesce((extract(epoch FROM r.backend_start) * 1000000)::bigint, -1), ''
 FROM pg_stat_replication r WHERE r.backend_xmin IS NOT NULL) h
 ORDER BY h.xmin_age DESC, h.since_us LIMIT $1::int
