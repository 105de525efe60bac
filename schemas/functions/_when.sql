-- Whether a step's condition (migration 0027, checked by the model: flowreg::Condition) holds for
-- its input: {"at": pointer, "equals": value} (JSON equality, as jsonb's: 1 equals 1.0),
-- {"at", "in": [values]}, {"at", "exists": true | false} (true: something, even null, is there),
-- {"all": [...]}, {"any": [...]} (each evaluated in order, stopping at the first that decides),
-- {"not": condition}. A pointer that finds nothing makes equals and in false.
CREATE OR REPLACE FUNCTION flowreg._when(p_cond jsonb, p_input jsonb)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  v_part jsonb;
  v_value jsonb;
BEGIN
  IF p_cond ? 'all' THEN
    FOR v_part IN SELECT e FROM jsonb_array_elements(p_cond->'all') AS e LOOP
      IF NOT flowreg._when(v_part, p_input) THEN
        RETURN false;
      END IF;
    END LOOP;
    RETURN true;
  ELSIF p_cond ? 'any' THEN
    FOR v_part IN SELECT e FROM jsonb_array_elements(p_cond->'any') AS e LOOP
      IF flowreg._when(v_part, p_input) THEN
        RETURN true;
      END IF;
    END LOOP;
    RETURN false;
  ELSIF p_cond ? 'not' THEN
    RETURN NOT flowreg._when(p_cond->'not', p_input);
  END IF;
  v_value := p_input #> flowreg._pointer_path(p_cond->>'at');
  IF p_cond ? 'exists' THEN
    RETURN (v_value IS NOT NULL) = (p_cond->>'exists')::boolean;
  ELSIF p_cond ? 'in' THEN
    RETURN v_value IS NOT NULL
           AND EXISTS (SELECT FROM jsonb_array_elements(p_cond->'in') AS e WHERE e = v_value);
  END IF;
  RETURN v_value IS NOT NULL AND v_value = p_cond->'equals';
END $$;

ALTER FUNCTION flowreg._when(jsonb, jsonb) SET jit = off;
