-- A task's gate (migration 0023): its step's gate prefix, then the key, the text at p_path in the
-- run's input ("" when there is nothing there, or when p_path is NULL: one key). A key longer
-- than 200 bytes is kept as its first 64 characters and its MD5, so that any input's key fits the
-- gate indexes. One expression, inlined into the statements that create tasks.
CREATE OR REPLACE FUNCTION flowreg._gate_of(p_prefix text, p_input jsonb, p_path text[])
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT (p_prefix || CASE WHEN octet_length(coalesce(p_input #>> p_path, '')) <= 200
                           THEN coalesce(p_input #>> p_path, '')
                           ELSE left(p_input #>> p_path, 64) || ' md5:' || md5(p_input #>> p_path)
                      END) COLLATE "C"
$$;
