-- Creates runs of a stored flow version, one per input, and starts their root steps.
-- A key already used for that flow slug returns the run that used it (created = false).
-- Errors: SQLSTATE P0002 when the flow version is not stored, 22023 when p_retry_of is unknown.
CREATE OR REPLACE FUNCTION flowreg.start_runs(p_slug text, p_version text, p_inputs jsonb[],
                                              p_keys text[] DEFAULT NULL,
                                              p_retry_of uuid DEFAULT NULL)
RETURNS TABLE (run_id uuid, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_steps int;
  v_new uuid[];
BEGIN
  SELECT count(*) INTO v_steps FROM flowreg.flow_steps
  WHERE flow_slug = p_slug AND version = p_version;
  IF v_steps = 0 THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002',
      MESSAGE = format('flow %L version %L is not stored', p_slug, p_version);
  END IF;
  IF p_retry_of IS NOT NULL AND NOT EXISTS (SELECT 1 FROM flowreg.runs WHERE id = p_retry_of) THEN
    RAISE EXCEPTION USING ERRCODE = '22023',
      MESSAGE = format('run %s (retried) does not exist', p_retry_of);
  END IF;

  WITH ins AS (
    INSERT INTO flowreg.runs (flow_slug, flow_version, input, remaining_steps, idempotency_key,
                              retry_of)
    SELECT p_slug, p_version, x.input, v_steps, x.key, p_retry_of
    FROM unnest(p_inputs, coalesce(p_keys, array_fill(NULL::text, ARRAY[cardinality(p_inputs)])))
      AS x(input, key)
    ON CONFLICT (flow_slug, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
  ),
  st AS (
    INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps)
    SELECT ins.id, fs.step_slug, fs.step_index, fs.kind, cardinality(fs.deps)
    FROM ins CROSS JOIN flowreg.flow_steps fs
    WHERE fs.flow_slug = p_slug AND fs.version = p_version
  )
  SELECT array_agg(id) INTO v_new FROM ins;

  IF v_new IS NOT NULL THEN
    PERFORM pg_notify('flowreg_runs', id::text || ' started') FROM unnest(v_new) AS id;
    PERFORM flowreg._start_steps(v_new);
  END IF;

  RETURN QUERY SELECT id, true FROM unnest(v_new) AS id;
  IF p_keys IS NOT NULL THEN
    RETURN QUERY
      SELECT r.id, false FROM flowreg.runs r
      WHERE r.flow_slug = p_slug AND r.idempotency_key = ANY (p_keys)
        AND r.id <> ALL (coalesce(v_new, '{}'));
  END IF;
END $$;
