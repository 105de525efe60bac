-- Records a worker's heartbeat ($8: its interval in milliseconds, -1 when not reported; $9: its
-- handler processes, '' when it has none).
SELECT flowreg.worker_heartbeat($1, $2, $3::int, $4::jsonb, $5::int, $6::boolean, $7,
 NULLIF($8, -1)::bigint, NULLIF($9, '')::jsonb)
