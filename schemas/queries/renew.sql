-- Renews leases ($3: the lease in milliseconds, -1 for none): the ids rejected.
SELECT unnest(flowreg.renew_leases($1, $2::jsonb, NULLIF($3, -1)::bigint,
 $4::boolean)) AS id
