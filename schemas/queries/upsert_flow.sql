-- RunStore::upsert_flow: stores a flow version ($1 slug, $2 version, $3 its definition).
SELECT flowreg.upsert_flow($1, $2, $3::jsonb) AS changed
