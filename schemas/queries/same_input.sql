-- Whether run $1's input equals $2 (compared as jsonb), and that input.
SELECT input = $2::jsonb AS same, input::text AS input FROM flowreg.runs
 WHERE id = $1::uuid
