-- flowreg's tables for `flowreg db health` and the metrics: live and dead rows (the statistics
-- collector's estimates), bytes of the table (with its TOAST) and of its indexes, the last vacuum
-- and analyze (manual or automatic; -1: never) and the count of vacuums, and an estimate of the
-- table's bloat: its main fork's bytes beyond what its live rows need at their average width
-- (pg_stats; a row's 24-byte header and 4-byte line pointer added, pages of 8,168 usable bytes),
-- 0 when the table was never analyzed.
SELECT c.relname::text AS name, coalesce(s.n_live_tup, 0) AS live,
 coalesce(s.n_dead_tup, 0) AS dead,
 pg_table_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes,
 coalesce((extract(epoch FROM greatest(s.last_vacuum, s.last_autovacuum)) * 1000000)::bigint, -1)
  AS vacuumed_us,
 coalesce((extract(epoch FROM greatest(s.last_analyze, s.last_autoanalyze)) * 1000000)::bigint, -1)
  AS analyzed_us,
 coalesce(s.vacuum_count + s.autovacuum_count, 0) AS vacuums,
 CASE WHEN w.width IS NULL THEN 0 ELSE greatest(0, pg_relation_size(c.oid)
  - (ceil(coalesce(s.n_live_tup, 0) * (28 + w.width) / 8168.0) * 8192)::bigint) END AS bloat_bytes
 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'flowreg'
 LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 LEFT JOIN LATERAL (SELECT sum(st.avg_width)::bigint AS width FROM pg_stats st
  WHERE st.schemaname = 'flowreg' AND st.tablename = c.relname) w ON true
 WHERE c.relkind IN ('r', 'p')
 ORDER BY c.relname
