-- Sends event $1 with data $2 (JSON text), idempotency key $3 (NULL: none).
SELECT event_id, resumed, duplicate FROM flowreg.send_event($1, $2::jsonb, $3)
