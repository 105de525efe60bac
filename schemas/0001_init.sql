-- flowreg migration 0001: the schema that holds flowreg's tables.
--
-- Released migrations are never edited (flowreg refuses an applied migration whose checksum
-- changed): a change is a new file, NNNN_name.sql with the next number.
-- The tables for runs, steps and tasks come in the next migration, written with the store.
CREATE SCHEMA IF NOT EXISTS flowreg;
