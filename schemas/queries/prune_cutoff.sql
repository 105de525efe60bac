-- The cutoff of a prune, by the server's clock: now minus $1 milliseconds, in microseconds since
-- the epoch.
SELECT (extract(epoch FROM now() - $1::bigint * interval '1 ms') * 1000000)::bigint
 AS cutoff_us
