-- Claims up to p_room tasks with a gate (concurrency limits per key, migration 0023) of the given
-- flow versions for p_worker, leased as _claim leases; returns their ids. Called by _claim, which
-- returns them with the tasks it claims itself.
--
-- Per gate (a step's own, or a flow's on its root steps), its keys are visited in key order from
-- where this connection's last claim left off (a cursor per gate, kept in the session setting
-- flowreg.gate_cursors), wrapping around once: a key with a free slot gives its oldest due tasks,
-- as many as its free slots, then the next key is visited. So a key with 100,000 queued tasks gives
-- at most its limit per claim, and every other key with queued tasks is reached within the same
-- round of claims; p_room bounds the tasks and 4 * p_room + 32 the keys visited per call.
--
-- Never exceeded: a key is taken with pg_try_advisory_xact_lock (a key another claim holds is
-- skipped, never waited for) before the statement that counts its running tasks, or its active
-- runs, and claims: that statement's snapshot sees every claim of the key committed before, and no
-- other claim of it can commit before this transaction ends. (A completion frees a slot without
-- the lock: a claim that does not see it yet takes one task fewer, never one too many.)
-- A step's gate counts its started tasks with the key (tasks_gate_running), over every version of
-- the flow: a requeued lapsed lease frees its slot. A flow's gate counts its runs holding a slot
-- of the key (gate_holders) that are still started, after it deleted those that ended: the claim
-- of a run's first task admits the run (gate_holders, runs.gate) and ungates its tasks, so that
-- its other root tasks, retries and lapsed leases are claimed as any task, with no slot of their
-- own; its end frees the slot.
CREATE OR REPLACE FUNCTION flowreg._claim_gated(p_worker text, p_slugs text[], p_versions text[],
                                                p_room int, p_lease_ms bigint)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  g record;
  v_ids bigint[] := '{}';
  v_got bigint[];
  v_runs uuid[];
  v_key text COLLATE "C";
  v_next text COLLATE "C";
  v_start text COLLATE "C";
  v_from text COLLATE "C";
  v_end text COLLATE "C";
  v_wrapped boolean;
  v_visits int := 0;
  v_free int;
  v_name text;
  v_cursors jsonb := coalesce(nullif(current_setting('flowreg.gate_cursors', true), ''),
                              '{}')::jsonb;
  v_set text;  -- set_config's value, unused
BEGIN
  FOR g IN
    -- (A flow's gate is on each of its root steps: one visit.)
    SELECT DISTINCT ON (f.slug, f.version, s.gate_prefix) f.slug, f.version, s.gate_prefix,
           s.gate_limit
    FROM unnest(p_slugs, p_versions) AS f(slug, version)
    CROSS JOIN LATERAL (SELECT fs.gate_prefix, fs.gate_limit FROM flowreg.flow_steps fs
                        WHERE fs.flow_slug = f.slug AND fs.version = f.version
                          AND fs.gate_prefix IS NOT NULL OFFSET 0) s
    ORDER BY f.slug, f.version, s.gate_prefix
  LOOP
    EXIT WHEN cardinality(v_ids) >= p_room OR v_visits >= 4 * p_room + 32;
    v_name := g.slug || ' ' || g.version || ' ' || g.gate_prefix;
    -- The prefix's keys lie in [prefix, prefix with its last ':' turned into ';').
    v_end := left(g.gate_prefix, -1) || ';';
    v_key := NULL;
    -- From the key after the cursor (the smallest text after a key is the key and U+0001), or
    -- the first key; once at the end, from the first key again up to the cursor.
    v_start := v_cursors->>v_name;
    IF v_start < g.gate_prefix OR v_start >= v_end THEN
      v_start := NULL;
    END IF;
    v_from := coalesce(v_start || chr(1), g.gate_prefix);
    v_wrapped := v_start IS NULL;
    LOOP
      EXIT WHEN cardinality(v_ids) >= p_room OR v_visits >= 4 * p_room + 32;
      -- The next key with a queued task: one probe of tasks_gated.
      v_next := NULL;
      SELECT q.gate INTO v_next FROM flowreg.tasks q
      WHERE q.status = 'queued' AND q.gate IS NOT NULL AND q.flow_slug = g.slug
        AND q.flow_version = g.version AND q.gate >= v_from AND q.gate < v_end
      ORDER BY q.gate LIMIT 1;
      IF v_next IS NULL THEN
        EXIT WHEN v_wrapped;
        v_wrapped := true;
        v_from := g.gate_prefix;
        CONTINUE;
      END IF;
      EXIT WHEN v_wrapped AND v_start IS NOT NULL AND v_next > v_start;
      v_key := v_next;
      v_from := v_key || chr(1);
      v_visits := v_visits + 1;
      CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtext(g.slug), hashtext(v_key));
      v_got := NULL;
      IF g.gate_prefix = ':' THEN
        -- A flow's gate: the runs holding the key's slots (new statements: snapshots taken after
        -- the lock), less those that ended (or were pruned), whose rows go.
        -- (Each holder's run read by primary key, a scalar subquery: never an anti join that a
        -- plan could run over all of runs_pkey.)
        DELETE FROM flowreg.gate_holders h
        WHERE h.flow_slug = g.slug AND h.gate = v_key
          AND (SELECT r.status FROM flowreg.runs r WHERE r.id = h.run_id)
              IS DISTINCT FROM 'started';
        SELECT g.gate_limit - count(*) INTO v_free
        FROM flowreg.gate_holders h WHERE h.flow_slug = g.slug AND h.gate = v_key;
        CONTINUE WHEN v_free <= 0;
        WITH c AS (
          SELECT q.id, q.run_id FROM flowreg.tasks q
          WHERE q.status = 'queued' AND q.gate IS NOT NULL AND q.flow_slug = g.slug
            AND q.flow_version = g.version AND q.gate = v_key AND q.available_at <= now()
          ORDER BY q.available_at
          LIMIT least(v_free, p_room - cardinality(v_ids))
          FOR UPDATE SKIP LOCKED
        ),
        -- Their runs, skipped when busy (a cancel, a completion), never waited for.
        lk AS (
          SELECT r.id FROM flowreg.runs r WHERE r.id = ANY (ARRAY(SELECT c.run_id FROM c))
            AND r.status = 'started'
          ORDER BY r.id FOR UPDATE OF r SKIP LOCKED
        ),
        admitted AS (
          UPDATE flowreg.runs r SET gate = v_key
          WHERE r.id = ANY (ARRAY(SELECT lk.id FROM lk))
          RETURNING r.id
        ),
        held AS (
          INSERT INTO flowreg.gate_holders (flow_slug, gate, run_id)
          SELECT g.slug, v_key, a.id FROM admitted a
          ON CONFLICT DO NOTHING
        ),
        claimed AS (
          UPDATE flowreg.tasks t
          SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker,
              started_at = now(), lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms),
              gate = NULL
          WHERE t.id = ANY (ARRAY(SELECT c.id FROM c WHERE c.run_id IN (SELECT a.id
                                                                         FROM admitted a)))
          RETURNING t.id, t.run_id
        )
        SELECT array_agg(claimed.id), array_agg(DISTINCT claimed.run_id) INTO v_got, v_runs
        FROM claimed;
        IF v_runs IS NOT NULL THEN
          -- The admitted runs' other gated tasks (another root step's, a map root's elements):
          -- claimed as any task. Found by run (tasks_by_run; the status written `status || ''`,
          -- so that no plan walks tasks_gated instead).
          UPDATE flowreg.tasks t SET gate = NULL
          WHERE t.run_id = ANY (v_runs) AND NOT t.solo AND t.status || '' = 'queued'
            AND t.gate IS NOT NULL;
        END IF;
      ELSE
        -- A step's gate: its tasks running with the key, of any version of the flow.
        SELECT g.gate_limit - count(*) INTO v_free
        FROM (SELECT FROM flowreg.tasks t
              WHERE t.status = 'started' AND t.gate IS NOT NULL AND t.flow_slug = g.slug
                AND t.gate = v_key
              LIMIT g.gate_limit) a;
        CONTINUE WHEN v_free <= 0;
        WITH c AS (
          SELECT q.id FROM flowreg.tasks q
          WHERE q.status = 'queued' AND q.gate IS NOT NULL AND q.flow_slug = g.slug
            AND q.flow_version = g.version AND q.gate = v_key AND q.available_at <= now()
          ORDER BY q.available_at
          LIMIT least(v_free, p_room - cardinality(v_ids))
          FOR UPDATE SKIP LOCKED
        ),
        claimed AS (
          UPDATE flowreg.tasks t
          SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker,
              started_at = now(), lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms)
          WHERE t.id = ANY (ARRAY(SELECT c.id FROM c))
          RETURNING t.id
        )
        SELECT array_agg(claimed.id) INTO v_got FROM claimed;
      END IF;
      v_ids := v_ids || coalesce(v_got, '{}');
    END LOOP;
    IF v_key IS NOT NULL THEN
      v_cursors := jsonb_set(v_cursors, ARRAY[v_name], to_jsonb(v_key));
    END IF;
  END LOOP;
  IF v_cursors <> '{}' THEN
    -- Session-wide (not local): the next claim of this connection goes on from here. A cursor
    -- per gate of the flows served; a few hundred bytes.
    v_set := set_config('flowreg.gate_cursors', v_cursors::text, false);
  END IF;
  RETURN v_ids;
END $$;

-- Every statement probes an index by key (tasks_gated, tasks_gate_running, gate_holders' and
-- the other primary keys), whatever the statistics of the moment (see _claim).
ALTER FUNCTION flowreg._claim_gated(text, text[], text[], int, bigint)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
  SET jit = off;
