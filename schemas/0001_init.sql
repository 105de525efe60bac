-- flowreg migration 0001: the schema flowreg, which holds flowreg's tables and functions.
--
-- A numbered migration is applied once and recorded with the checksum of its text; one already
-- applied is never edited (flowreg refuses a changed text): a change is a new file,
-- NNNN_name.sql with the next number. Functions live in schemas/functions/.
CREATE SCHEMA IF NOT EXISTS flowreg;
