-- Within a work() call: records tasks this transaction created already claimed by the call's
-- worker (_account_steps, _start_steps), given the call's claim p_claim (transaction setting
-- flowreg.claim, see work) and their ids. The worker's room ("left") shrinks by their number, and,
-- unless p_listed is false (the caller returns them itself: a chain's next steps, see
-- _complete_locked), their ids join the transaction setting flowreg.claimed, which _claim returns
-- with its own claims. Nothing when p_ids is NULL. Its settings are assignments, which PL/pgSQL
-- evaluates without the executor (PERFORM runs a query: see work).
CREATE OR REPLACE FUNCTION flowreg._claimed_here(p_claim jsonb, p_ids bigint[],
                                                 p_listed boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_set text;
BEGIN
  IF p_ids IS NULL THEN
    RETURN;
  END IF;
  v_set := set_config('flowreg.claim',
                      jsonb_set(p_claim, '{left}',
                                to_jsonb((p_claim->>'left')::int - cardinality(p_ids)))::text,
                      true);
  IF NOT p_listed THEN
    RETURN;
  END IF;
  v_set := set_config('flowreg.claimed',
                      concat_ws(',', nullif(current_setting('flowreg.claimed', true), ''),
                                array_to_string(p_ids, ',')),
                      true);
END $$;

ALTER FUNCTION flowreg._claimed_here(jsonb, bigint[], boolean) SET jit = off;
