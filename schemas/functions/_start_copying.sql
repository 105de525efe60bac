-- The first statement of a batch start by COPY (RunStore::start_runs,
-- core/src/store/run_store.cpp): for p_n runs of a flow version of one single step, returns one row
-- per run: its id and its task's id, with the step's slug, timeout and priority (migration 0022),
-- and queues start_runs' notifications. The caller then writes the runs and their tasks with COPY,
-- in the same transaction, the rows start_run's short path writes (the layout of migrations 0012
-- and 0013: no step state, attempts 0, the run naming its solo task). Returns no row for any other
-- flow version (several steps, a map step, a step with a concurrency limit or a condition, not
-- stored): the caller calls start_runs instead, in the same transaction.
--
-- Why COPY: PostgreSQL logs the rows of one COPY into a table with one WAL record per page
-- (heap_multi_insert) instead of one per row, which saves about 47 bytes of WAL per row (measured:
-- 105 against 152 bytes per row of runs, 20,000 rows), two rows per run started.
--
-- As in start_runs, a delete of the version cannot slip between the read of its steps and the
-- insert of its runs (see _guard_flow_delete): this function takes the lock on runs that the
-- inserts would take, before it reads the steps in a statement of its own. So a delete that
-- committed before is seen (no step: no row returned, and start_runs raises P0002), and a delete
-- that comes after waits for this transaction to end, and then sees its runs.
-- Plans stable by construction: primary keys only, one generic plan per session.
CREATE OR REPLACE FUNCTION flowreg._start_copying(p_slug text, p_version text, p_n int)
RETURNS TABLE (run_id uuid, task_id bigint, step_slug text, timeout_ms bigint, priority int)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_step text;
  v_timeout bigint;
  v_priority int;
  v_ids uuid[];
  v_tasks bigint[];
BEGIN
  LOCK TABLE flowreg.runs IN ROW EXCLUSIVE MODE;
  SELECT fs.step_slug, fs.timeout_ms, fs.priority INTO v_step, v_timeout, v_priority
  FROM flowreg.flow_steps fs
  WHERE fs.flow_slug = p_slug AND fs.version = p_version AND fs.kind = 'single'
    AND fs.gate_prefix IS NULL  -- a gated step's task is written with its key: start_runs
    AND NOT fs.checked  -- a step with a condition is started by _start_steps (migration 0027)
    AND NOT EXISTS (SELECT FROM flowreg.flow_steps o
                    WHERE o.flow_slug = p_slug AND o.version = p_version
                      AND o.step_slug <> fs.step_slug);
  IF NOT FOUND OR p_n <= 0 THEN
    RETURN;
  END IF;

  -- Time-ordered ids (UUID version 7), as start_runs makes them; the tasks' ids in the same order.
  SELECT array_agg(x.id ORDER BY x.i), array_agg(x.task_id ORDER BY x.i) INTO v_ids, v_tasks
  FROM (SELECT i,
               encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
                 substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                           FROM 3)
                 FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid AS id,
               nextval('flowreg.tasks_id_seq') AS task_id
        FROM generate_series(1, p_n) AS i) x;
  -- Sent at commit, like start_runs' (none if a COPY fails: the transaction is rolled back).
  PERFORM pg_notify('flowreg_runs', id::text || ' started') FROM unnest(v_ids) AS id;
  PERFORM pg_notify('flowreg_tasks', p_slug);
  RETURN QUERY SELECT r, t, v_step, v_timeout, v_priority FROM unnest(v_ids, v_tasks) AS x(r, t);
END $$;

ALTER FUNCTION flowreg._start_copying(text, text, int)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
