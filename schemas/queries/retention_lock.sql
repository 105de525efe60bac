-- Takes the retention lock ($1, a session advisory lock: one worker's retention at a time), or
-- answers false at once when another session holds it. A session that ends (a worker killed)
-- releases it.
SELECT pg_try_advisory_lock($1::bigint) AS locked
