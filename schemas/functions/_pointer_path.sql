-- A JSON pointer (RFC 6901, checked by the model) as the path the #> and #>> operators take:
-- "/a/b~1c" -> {a,b/c}, "" -> {} (the whole document).
CREATE OR REPLACE FUNCTION flowreg._pointer_path(p_pointer text)
RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
  SELECT ARRAY(SELECT replace(replace(p.t, '~1', '/'), '~0', '~')
               FROM unnest((string_to_array(p_pointer, '/'))[2:]) WITH ORDINALITY AS p(t, i)
               ORDER BY p.i)
$$;

ALTER FUNCTION flowreg._pointer_path(text) SET jit = off;
