-- Extends the leases of started tasks p_worker holds at the given attempt, by least(each step's
-- timeout, p_lease_ms) from now (p_lease_ms NULL: the timeout). p_batch: [{"id", "attempt"}].
-- Returns the ids rejected (no longer this worker's at that attempt).
--
-- With p_skip_locked, renewal never waits: tasks whose rows another transaction holds (the
-- worker's own result being recorded, a claimer or a crash report looking at them) are neither
-- renewed nor rejected; the next renewal sees them. Called on every keeper tick: one generic plan
-- per session walking the tasks' primary key (see _claim). The status tests are written
-- `status || '' = 'started'` so that no plan reads tasks_leased (`WHERE status = 'started'`) whole
-- instead: planned while few tasks were started, each renewal read every started task of every
-- worker (tests/pg/hot_path_test.cpp reads the plans). The tasks are found by their ids as
-- conditions of tasks_pkey (`id = ANY (...)`), never by a join on `t.id = x.id`, which a plan made
-- on small tables ran as a walk of the whole tasks_pkey joined to the batch.
CREATE OR REPLACE FUNCTION flowreg.renew_leases(p_worker text, p_batch jsonb, p_lease_ms bigint)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_acc bigint[];
BEGIN
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  WITH upd AS (
    UPDATE flowreg.tasks t
    SET lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms)
    FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int)
    WHERE t.id = ANY (v_ids) AND t.id = b.id AND t.attempt = b.attempt
      AND t.status || '' = 'started'
      AND t.worker_id = p_worker
    RETURNING t.id
  )
  SELECT array_agg(id) INTO v_acc FROM upd;
  RETURN ARRAY(SELECT DISTINCT i FROM unnest(v_ids) i WHERE i <> ALL (coalesce(v_acc, '{}'))
               ORDER BY 1);
END $$;

CREATE OR REPLACE FUNCTION flowreg.renew_leases(p_worker text, p_batch jsonb, p_lease_ms bigint,
                                                p_skip_locked boolean)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[];
  v_acc bigint[];
BEGIN
  IF NOT p_skip_locked THEN
    RETURN flowreg.renew_leases(p_worker, p_batch, p_lease_ms);
  END IF;
  SELECT array_agg((e->>'id')::bigint) INTO v_ids FROM jsonb_array_elements(p_batch) e;
  WITH mine AS (
    SELECT t.id FROM flowreg.tasks t
    JOIN jsonb_to_recordset(p_batch) AS b(id bigint, attempt int) ON b.id = t.id
    WHERE t.id = ANY (v_ids) AND t.attempt = b.attempt AND t.status || '' = 'started'
      AND t.worker_id = p_worker
    FOR UPDATE OF t SKIP LOCKED
  ),
  upd AS (
    UPDATE flowreg.tasks t
    SET lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms)
    WHERE t.id = ANY (ARRAY(SELECT mine.id FROM mine))
    RETURNING t.id
  )
  SELECT array_agg(id) INTO v_acc FROM upd;
  -- Rejected: the tasks that are no longer this worker's at that attempt, read afresh (no lock).
  -- A task skipped above because another transaction held its row (the worker's own result being
  -- recorded, a claimer or a crash report looking at it) and still this worker's is neither
  -- renewed nor rejected: the next renewal sees it.
  RETURN ARRAY(
    SELECT DISTINCT b.id FROM jsonb_to_recordset(p_batch) AS b(id bigint, attempt int)
    WHERE b.id <> ALL (coalesce(v_acc, '{}'))
      AND NOT EXISTS (SELECT 1 FROM flowreg.tasks t
                      WHERE t.id = ANY (ARRAY[b.id]) AND t.attempt = b.attempt
                        AND t.status || '' = 'started'
                        AND t.worker_id = p_worker)
    ORDER BY 1);
END $$;

ALTER FUNCTION flowreg.renew_leases(text, jsonb, bigint, boolean)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
  SET enable_mergejoin = off SET jit = off;

ALTER FUNCTION flowreg.renew_leases(text, jsonb, bigint) SET jit = off;
