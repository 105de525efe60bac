-- Sends signal $2 with data $3 (JSON text) to run $1, idempotency key $4 (NULL: none).
SELECT signal_id, outcome FROM flowreg.send_signal($1::uuid, $2, $3::jsonb, $4)
