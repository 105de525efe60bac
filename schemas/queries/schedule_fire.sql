-- Fires one due schedule: flowreg.fire_schedule (schemas/functions/fire_schedule.sql).
-- $4: a JSON array of the ticks as microseconds since the epoch; $5: a JSON array of the inputs,
-- one per tick; $6: the next tick (microseconds, NULL: none); $8: an error ('' for none).
SELECT f.outcome, to_jsonb(f.run_ids)::text AS run_ids
FROM flowreg.fire_schedule($1, to_timestamp($2::bigint / 1e6), $3,
                           ARRAY(SELECT to_timestamp(t::bigint / 1e6)
                                 FROM jsonb_array_elements_text($4::jsonb) AS t),
                           ARRAY(SELECT i FROM jsonb_array_elements($5::jsonb) AS i),
                           to_timestamp($6::bigint / 1e6), $7::int, NULLIF($8, '')) AS f
