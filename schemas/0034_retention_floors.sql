-- flowreg migration 0034: retention's walk starts where the runs it may still remove begin.
--
-- A round of retention (flowreg.retain) walks each flow's runs through runs_by_flow, newest first
-- from the flow's cutoff, down to its oldest entry. The entries of the runs that earlier rounds
-- deleted stay in the index until VACUUM removes them, and VACUUM cannot while a snapshot older
-- than their deletion is held (a pg_dump, a long report, a replica's hot_standby_feedback): under
-- such a snapshot each round stepped over every run deleted since it, more each round.
--
-- * floors: per flow slug, the creation time of its oldest run at the end of the last round
--   ({"slug": "2026-11-29T12:00:00+00:00", ...}); a round walks each flow's runs down to its floor
--   less a second, no further. Written after each round that ended without an error
--   (schemas/queries/retention_floors.sql), read by retain and by retention_state.
-- * swept_at: when a round last walked every flow's runs to their oldest entry, floors ignored. A
--   round does so when that was an hour ago or more: a run whose starting transaction was open
--   for more than a second across a round that found no older run of its flow (its created_at is
--   the transaction's start) can be created below its flow's floor, and is removed by that round.
--
-- (IF NOT EXISTS: a database may run this file again after its record was lost.)
ALTER TABLE flowreg.retention ADD COLUMN IF NOT EXISTS floors jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE flowreg.retention ADD COLUMN IF NOT EXISTS swept_at timestamptz;
