-- Reports tasks a dead worker was running. p_batch: [{"id", "attempt", "signal"}], signal null
-- when none was recorded for that task. An entry counts when the task is still at that attempt,
-- started or queued again after its lease expired. A task with a signal fails permanently with
-- "handler crashed the worker (signal N)"; one without gets a crash counted, and fails once it
-- has p_limit of them. Rows: (id, outcome) with outcome 'failed', 'counted' or 'stale' (the task
-- moved on: completed, failed, or a later attempt runs). One generic plan per session (see
-- _claim).
CREATE OR REPLACE FUNCTION flowreg.report_crashes(p_batch jsonb, p_limit int)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_ids bigint[];
  v_fail jsonb;
  v_counted bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  IF v_ids IS NULL THEN
    RETURN;
  END IF;
  PERFORM flowreg._lock_runs_of(v_ids);
  WITH b AS (
    SELECT DISTINCT ON (b.id) b.* FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int,
                                                                        signal int)
    ORDER BY b.id, b.signal NULLS LAST
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET crashes = t.crashes + 1,
        status = CASE WHEN b.signal IS NOT NULL OR t.crashes + 1 >= p_limit THEN 'started'
                      ELSE t.status END
    FROM b
    WHERE t.id = ANY (v_ids) AND t.id = b.id AND t.attempt = b.attempt
      AND t.status IN ('started', 'queued')
    RETURNING t.id, t.attempt, t.crashes, b.signal,
              (b.signal IS NOT NULL OR t.crashes >= p_limit) AS fail
  )
  SELECT jsonb_agg(jsonb_build_object(
           'id', u.id, 'attempt', u.attempt, 'permanent', true, 'outcome', 'crashed',
           'error', CASE WHEN u.signal IS NOT NULL
                         THEN format('handler crashed the worker (signal %s)', u.signal)
                         ELSE format('handler was running in %s workers that died (no fatal '
                                     'signal was recorded for it)', u.crashes) END))
           FILTER (WHERE u.fail),
         array_agg(u.id) FILTER (WHERE NOT u.fail)
  INTO v_fail, v_counted
  FROM upd u;
  IF v_fail IS NOT NULL THEN
    RETURN QUERY SELECT f, 'failed'::text FROM unnest(flowreg._fail_locked(v_fail)) AS f;
  END IF;
  RETURN QUERY SELECT c, 'counted'::text FROM unnest(coalesce(v_counted, '{}')) AS c;
  RETURN QUERY SELECT i, 'stale'::text FROM unnest(v_ids) AS i
               WHERE i NOT IN (SELECT (e->>'id')::bigint FROM jsonb_array_elements(coalesce(v_fail, '[]')) e)
                 AND i <> ALL (coalesce(v_counted, '{}'));
END $$;

ALTER FUNCTION flowreg.report_crashes(jsonb, int)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
