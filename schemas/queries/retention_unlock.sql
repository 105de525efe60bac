-- Releases the retention lock ($1) that this session holds.
SELECT pg_advisory_unlock($1::bigint) AS unlocked
