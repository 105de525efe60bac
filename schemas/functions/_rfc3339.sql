-- The time an RFC 3339 text names ("2026-11-28T09:00:00Z", "2026-11-28 10:00:00.250+01:00"), or
-- NULL for anything else (PostgreSQL's own casts also accept 'now', 'tomorrow', 'epoch', dates
-- without a time or a zone, whose meaning depends on the session: refused here). A sleep step's
-- `until` (migration 0025, _start_steps) reads its time through it.
CREATE OR REPLACE FUNCTION flowreg._rfc3339(p_text text)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF p_text IS NULL OR octet_length(p_text) > 40
     OR p_text !~ '^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)$' THEN
    RETURN NULL;
  END IF;
  RETURN p_text::timestamptz;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
  RETURN NULL;
END $$;

ALTER FUNCTION flowreg._rfc3339(text) SET jit = off;
