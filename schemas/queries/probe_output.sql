-- Whether the server accepts $1 as jsonb (an error when it refuses it).
SELECT $1::jsonb IS NOT NULL AS ok
