-- Deletes the schedules of source $1 (a configuration file's 'config:<module>') whose names are
-- not in $2 (a JSON array): the file no longer declares them. Returns their names.
DELETE FROM flowreg.schedules
WHERE source = $1 AND NOT (name = ANY (ARRAY(SELECT jsonb_array_elements_text($2::jsonb))))
RETURNING name
