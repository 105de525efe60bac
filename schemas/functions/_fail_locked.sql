-- Fails or requeues started tasks whose attempt matches; returns the ids accepted. A task with
-- attempts left (and not failed permanently) is queued again after retry_delay_ms; otherwise it
-- leaves the queue (its attempts and worker added to its step state, or to its run: migration 0012;
-- a chain's step state written with them: migration 0017) and its step and run fail. p_batch:
-- [{"id", "attempt", "error", "permanent", "outcome", "process"}]. A task's attempts and delays are
-- its step's (flow_steps, by primary key: migration 0014); a task whose step is gone has no attempt
-- left. Each attempt accepted is kept in task_attempts (migration 0019) with its outcome: the
-- entry's "outcome" when given ('lease_expired' from _claim, 'crashed' from report_crashes), else
-- 'failed' (for good) or 'retried' (queued again); its error cut to 4,000 characters; what it cost
-- in a handler process ("process", an array) with it (migration 0031). An entry
-- with "snooze_ms" (a handler's flowreg::snooze, migration 0025) queues its task again that much
-- later without spending its attempt (given back, as release_tasks does for a task that never ran),
-- keeps no attempt, and counts one more in tasks.snoozes.
-- REQUIRES: the tasks' runs are locked.
--
-- Cost per task flat in the batch size, plans stable by construction, as in _complete_locked:
-- nested loops driven by the batch, probing primary keys through `key = ANY (ARRAY[row.key])`.
CREATE OR REPLACE FUNCTION flowreg._fail_locked(p_batch jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  v_acc bigint[];
  v_fail_runs uuid[];
  v_fail_steps text[];
  v_fail_errors text[];
  v_fail_attempts int[];
  v_fail_workers text[];
  v_fail_chained boolean[];
  v_fail_started timestamptz[];
  v_fail_flows text[];
  v_fail_versions text[];
  v_flows text[];
  v_snoozed bigint[];
BEGIN
  WITH b AS MATERIALIZED (
    -- An id given twice: the last entry counts.
    SELECT DISTINCT ON (x.id) x.id, x.attempt, x.error, x.permanent, x.outcome, x.snooze_ms,
                              x.process
    FROM (SELECT (e->>'id')::bigint AS id, (e->>'attempt')::int AS attempt,
                 coalesce(e->>'error', '') AS error,
                 coalesce((e->>'permanent')::boolean, false) AS permanent,
                 coalesce(e->>'outcome', '') AS outcome, (e->>'snooze_ms')::bigint AS snooze_ms,
                 CASE WHEN jsonb_typeof(e->'process') = 'array' THEN e->'process' END AS process,
                 i
          FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS j(e, i)) x
    ORDER BY x.id, x.i DESC
  ),
  gone AS (
    -- Failed for good: the task leaves the queue (its step and run fail below).
    DELETE FROM flowreg.tasks t USING b
    WHERE t.id = ANY (ARRAY[b.id]) AND t.status || '' = 'started' AND t.attempt = b.attempt
      AND b.snooze_ms IS NULL
      AND (b.permanent
           OR t.attempt >= coalesce((SELECT fs.max_attempts FROM flowreg.flow_steps fs
                                     WHERE fs.flow_slug = t.flow_slug
                                       AND fs.version = t.flow_version
                                       AND fs.step_slug = t.step_slug), 0))
    RETURNING t.id, t.run_id, t.step_slug, t.task_index, 'failed'::text AS status, b.error,
              t.attempt, t.flow_slug, t.available_at, t.worker_id, b.permanent, t.flow_version,
              t.chained, t.created_at, t.started_at AS attempt_started,
              CASE WHEN b.outcome = 'lease_expired' THEN least(t.lease_expires_at, now())
                   ELSE now() END AS attempt_finished, b.outcome, b.process
  ),
  again AS (
    -- Attempts left: queued again after its retry delay.
    UPDATE flowreg.tasks t
    SET status = 'queued',
        available_at = now() + (SELECT flowreg.retry_delay_ms(fs.base_delay_ms, fs.max_delay_ms,
                                                              t.attempt)
                                FROM flowreg.flow_steps fs
                                WHERE fs.flow_slug = t.flow_slug AND fs.version = t.flow_version
                                  AND fs.step_slug = t.step_slug) * interval '1 ms',
        finished_at = NULL, error = b.error, error_at = now(), lease_expires_at = NULL
    FROM b
    WHERE t.id = ANY (ARRAY[b.id]) AND t.status || '' = 'started' AND t.attempt = b.attempt
      AND NOT b.permanent AND b.snooze_ms IS NULL
      AND t.attempt < coalesce((SELECT fs.max_attempts FROM flowreg.flow_steps fs
                                WHERE fs.flow_slug = t.flow_slug AND fs.version = t.flow_version
                                  AND fs.step_slug = t.step_slug), 0)
    RETURNING t.id, t.run_id, t.step_slug, t.task_index, t.status, t.error, t.attempt,
              t.flow_slug, t.available_at, t.worker_id, false AS permanent, t.flow_version,
              t.chained, t.created_at, t.started_at AS attempt_started, now() AS attempt_finished,
              b.outcome, b.process
  ),
  snoozed AS (
    -- Snoozed: queued again for later, its attempt given back.
    UPDATE flowreg.tasks t
    SET status = 'queued', attempt = t.attempt - 1,
        available_at = now() + greatest(b.snooze_ms, 1) * interval '1 ms',
        lease_expires_at = NULL, snoozes = coalesce(t.snoozes, 0) + 1
    FROM b
    WHERE t.id = ANY (ARRAY[b.id]) AND t.status || '' = 'started' AND t.attempt = b.attempt
      AND b.snooze_ms IS NOT NULL
    RETURNING t.id
  ),
  upd AS (SELECT * FROM gone UNION ALL SELECT * FROM again),
  kept AS (
    -- The attempt, kept (migration 0019): one insert per task, by primary key.
    INSERT INTO flowreg.task_attempts (run_id, step_slug, task_index, attempt, worker_id,
                                       started_at, finished_at, outcome, error, process)
    SELECT u.run_id, u.step_slug, u.task_index, u.attempt, u.worker_id, u.attempt_started,
           u.attempt_finished,
           CASE WHEN u.outcome IN ('lease_expired', 'crashed') THEN u.outcome
                WHEN u.status = 'failed' THEN 'failed' ELSE 'retried' END,
           left(u.error, 4000), u.process
    FROM upd u
    ON CONFLICT DO NOTHING
  )
  SELECT array_agg(u.id),
         array_agg(u.run_id) FILTER (WHERE u.status = 'failed'),
         array_agg(u.step_slug) FILTER (WHERE u.status = 'failed'),
         array_agg(format('step %L%s failed %s: %s', u.step_slug,
                          CASE WHEN u.task_index > 0 OR s.kind IN ('map', 'flow_map')
                               THEN ' task ' || u.task_index ELSE '' END,
                          CASE WHEN u.permanent THEN 'permanently on attempt ' || u.attempt
                               ELSE 'after ' || u.attempt || ' attempt'
                                    || CASE WHEN u.attempt = 1 THEN '' ELSE 's' END END,
                          u.error)) FILTER (WHERE u.status = 'failed'),
         array_agg(u.attempt) FILTER (WHERE u.status = 'failed'),
         array_agg(u.worker_id) FILTER (WHERE u.status = 'failed'),
         array_agg(u.chained) FILTER (WHERE u.status = 'failed'),
         array_agg(u.created_at) FILTER (WHERE u.status = 'failed'),
         array_agg(u.flow_slug) FILTER (WHERE u.status = 'failed'),
         array_agg(u.flow_version) FILTER (WHERE u.status = 'failed'),
         array_agg(DISTINCT u.flow_slug) FILTER (WHERE u.status = 'queued'
                                                  AND u.available_at <= now()),
         (SELECT array_agg(z.id) FROM snoozed z)
  INTO v_acc, v_fail_runs, v_fail_steps, v_fail_errors, v_fail_attempts, v_fail_workers,
       v_fail_chained, v_fail_started, v_fail_flows, v_fail_versions, v_flows, v_snoozed
  FROM upd u
  -- No step state: a run of a one-step flow (migration 0012), whose step is single.
  LEFT JOIN flowreg.step_states s ON s.run_id = ANY (ARRAY[u.run_id])
                                  AND s.step_slug = ANY (ARRAY[u.step_slug]);

  IF v_fail_runs IS NOT NULL THEN
    -- Its attempts and worker go to the step state (the task has left the queue), or to the run
    -- of a one-step flow (migration 0012), which _fail_runs then fails. A chain's step (migration
    -- 0017) has no step state yet: it is written now, failed.
    WITH x AS (
      SELECT y.run_id, y.step_slug, (array_agg(y.error ORDER BY y.i))[1] AS error,
             sum(y.attempt)::int AS n, (array_agg(y.worker_id ORDER BY y.i))[1] AS worker_id,
             bool_or(y.chained) AS chained, min(y.started_at) AS started_at,
             min(y.flow_slug) AS flow_slug, min(y.flow_version) AS flow_version
      FROM unnest(v_fail_runs, v_fail_steps, v_fail_errors, v_fail_attempts, v_fail_workers,
                  v_fail_chained, v_fail_started, v_fail_flows, v_fail_versions)
           WITH ORDINALITY AS y(run_id, step_slug, error, attempt, worker_id, chained, started_at,
                                flow_slug, flow_version, i)
      GROUP BY 1, 2
    ),
    chain_st AS (
      INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, remaining_deps, status,
                                       remaining_tasks, task_count, error, started_at,
                                       finished_at, attempts, worker_id)
      SELECT x.run_id, x.step_slug, fs.step_index, 'single', 0, 'failed', 1, 1, x.error,
             x.started_at, now(), x.n, x.worker_id
      FROM x
      CROSS JOIN LATERAL (SELECT f.step_index FROM flowreg.flow_steps f
                          WHERE f.flow_slug = x.flow_slug AND f.version = x.flow_version
                            AND f.step_slug = x.step_slug OFFSET 0) fs
      WHERE x.chained
    ),
    st AS (
      UPDATE flowreg.step_states s
      SET status = 'failed', error = x.error, finished_at = now(), attempts = s.attempts + x.n,
          worker_id = x.worker_id
      FROM x
      WHERE NOT x.chained AND s.run_id = ANY (ARRAY[x.run_id])
        AND s.step_slug = ANY (ARRAY[x.step_slug]) AND s.status = 'started'
    )
    UPDATE flowreg.runs r SET attempts = r.attempts + x.n, worker_id = x.worker_id
    FROM x
    WHERE r.id = ANY (ARRAY[x.run_id]) AND r.attempts IS NOT NULL AND r.status = 'started';
    PERFORM flowreg._fail_runs(v_fail_runs, v_fail_errors);
  END IF;
  IF v_flows IS NOT NULL THEN
    PERFORM pg_notify('flowreg_tasks', f) FROM unnest(v_flows) AS f;
  END IF;
  RETURN coalesce(v_acc, '{}') || coalesce(v_snoozed, '{}');
END $$;

ALTER FUNCTION flowreg._fail_locked(jsonb)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
  SET enable_mergejoin = off SET jit = off;
