-- Claims up to p_room tasks with a gate (concurrency limits per key, migration 0023) of the given
-- flow versions for p_worker, leased as _claim leases; returns them, as the claim wrote them.
-- Called by _claim, which returns them with the tasks it claims itself.
--
-- Per gate (a step's own, or a flow's on its root steps), in one pass per priority level of the
-- flow version, highest first (migration 0033), the keys with a queued task of the pass's level
-- are visited in key order from where this connection's last claim of that level left off (a
-- cursor per gate and level, kept in the session setting flowreg.gate_cursors), wrapping around
-- once: a key with a free slot gives its due tasks of that level and higher ones, highest priority
-- first, then oldest (migration 0032), as many as its free slots. So every key's tasks of a level
-- come before any key's of a lower level; a key with 100,000 queued tasks gives at most its limit
-- per claim, and every other key with queued tasks of the same level is reached within the same
-- round of claims. Set-based, in rounds: a skip scan of tasks_gated (by level, then key) gathers
-- the next keys of the level (as many as the room left, at least 16: more than a limit above 1
-- needs, but fewer rounds when keys are busy), one statement takes their locks, one claims from
-- all those it got; p_room bounds the tasks and 4 * p_room + 32 the keys visited per call, over
-- all passes. When that statement stops at the room left (or the one bucket's tokens), the keys
-- after the last it reached were not served: the cursor stays at that key. A key's tasks are read
-- per priority level taken (v_above: those of v_levels, queue_levels and 0, at or above the
-- pass's, highest first), each level in available_at order up to its first task not yet due, as
-- _claim walks tasks_queued: the levels' walks are a nested loop over unnest(v_above), in the
-- array's order, that the key's LIMIT stops once it has its tasks (no later level read, no task
-- locked that is not taken); a flow that uses no priority has the one level 0: one pass, one
-- walk. A pass of a level with no queued task costs one probe (two after a wrap). A key visited
-- again by a lower pass is taken again (an advisory lock this transaction holds is granted again,
-- and the slots counted include this transaction's claims).
--
-- Never exceeded: a key is taken with pg_try_advisory_xact_lock (a key another claim holds is
-- skipped, never waited for) in a statement before the one that counts its running tasks, or its
-- active runs, and claims: that statement's snapshot sees every claim of the key committed before,
-- and no other claim of it can commit before this transaction ends. (A completion frees a slot
-- without the lock: a claim that does not see it yet takes one task fewer, never one too many.)
-- A step's gate counts its started tasks with the key (tasks_gate_running), over every version of
-- the flow: a requeued lapsed lease frees its slot. A flow's gate counts its runs holding a slot
-- of the key (gate_holders) that are still started, after it deleted those that ended: the claim
-- of a run's first task admits the run (gate_holders; its row is read, neither locked nor written,
-- as _claim claims any task) and ungates its tasks, so that its other root tasks, retries and
-- lapsed leases are claimed as any task, with no slot of their own; its end frees the slot. (A
-- run cancelled while a claim admits it: the task the claim locked first is claimed, and its
-- result refused, as _claim's would be; the slot it took is deleted with the other ended runs'.
-- A task the cancel deleted or locked first is not claimed.)
--
-- Rate limits (migration 0024), on a step's gate: a task claimed takes a token of its bucket (the
-- key's, or the one of the step or flow), as the claim writes it (rate_buckets: the tokens at a
-- time; refilled at rate_limit per rate_per_ms, up to rate_limit). A bucket is read and written
-- under its lock, taken as the keys' are (the key's own lock serves a step's bucket per key), in a
-- statement before the one that reads it: never two claims spending the same tokens. The one
-- bucket of a limit without a key keeps its tokens in shards (_rate_shards: 4 for a limit of
-- 1,024 or more a period), each locked as a bucket: a claim takes the shards it needs that no
-- other claim holds, so that claims of several workers run side by side. It is the exception to
-- "never waited for": when another claim holds every shard, the last one tried of the first such
-- bucket a call visits is waited for (no deadlock: a call waits for one lock at most, and a call
-- that holds a bucket's lock waits for nothing after). When a
-- bucket visited is left without a token, the transaction setting flowreg.rate_due tells work()
-- when it has one again (a worker claims then, rather than at its next poll); and when a key or a
-- bucket was skipped because another claim held it, 2 ms from now (that claim's transaction ends
-- meanwhile: its worker does not wait for the next poll to claim again).
CREATE OR REPLACE FUNCTION flowreg._claim_gated(p_worker text, p_slugs text[], p_versions text[],
                                                p_room int, p_lease_ms bigint)
RETURNS flowreg.tasks[] LANGUAGE plpgsql AS $$
DECLARE
  g record;
  v_ids flowreg.tasks[] := '{}';  -- the tasks claimed, as claimed (see _claim)
  v_got flowreg.tasks[];
  v_runs uuid[];
  v_keys text[];    -- the keys gathered by a round
  v_locked text[];  -- those whose lock it got
  v_last text COLLATE "C";
  v_start text COLLATE "C";
  v_from text COLLATE "C";
  v_end text COLLATE "C";
  v_upto text COLLATE "C";  -- the keys gathered are below it: v_end, or after the wrap the cursor
  v_wrapped boolean;
  v_visits int := 0;
  v_name text;
  v_cursors jsonb := coalesce(nullif(current_setting('flowreg.gate_cursors', true), ''),
                              '{}')::jsonb;
  v_set text;  -- set_config's value, unused
  v_moved boolean := false;  -- a cursor moved
  -- Rate limits (migration 0024) of the gate visited: v_rate, it has one; v_keyed, a bucket per
  -- key (else one, v_tok its tokens); v_rlock, the buckets need locks of their own (they are the
  -- flow's, shared by its steps; or one for all keys); v_plen, the prefix's length.
  v_rate boolean;
  v_keyed boolean;
  v_rlock boolean;
  v_plen int;
  v_tok double precision;
  v_min_tok double precision;
  v_due timestamptz;  -- when a bucket found empty has a token again (see work)
  v_waited boolean := false;  -- a bucket's lock was waited for
  -- The one bucket's shards (_rate_shards): how many, each one's tokens at most (v_cap; a bucket
  -- per key: the limit), those locked (keys, their tokens now), the one tried first, the shard.
  v_shards int;
  v_cap double precision;
  v_skeys text[];
  v_stoks double precision[];
  v_first int;
  v_shard int;
  v_key text COLLATE "C";
  v_t double precision;
  v_held boolean;  -- a shard was held by another claim
  v_n int;
  v_i int;
  v_take double precision;
  v_levels int[];  -- the priorities the flow version's tasks may have, highest first (0022)
  v_lv int;  -- the level of the pass (NULL: the one pass of a limit without a key)
  v_above int[];  -- the levels a pass takes tasks of: its own and the higher ones
  v_cname text;  -- the name of the pass's cursor: the gate's and the level
  v_spent boolean;  -- the one bucket of the gate's rate limit ran out of tokens
  v_lim int;  -- the most tasks a round's claim statement may take
  v_reach text COLLATE "C";  -- the last key that statement reached, and its tasks (v_cn)
  v_cn int;
BEGIN
  FOR g IN
    -- (A flow's gate is on each of its root steps: one visit. spread: a run may have several
    -- gated tasks, of several root steps or a map root step's elements.)
    -- (A step's gate has its step's rate limit, if any; a flow's gate none: the model refuses a
    -- rate limit on a root step of a flow with a concurrency limit.)
    SELECT f.slug, f.version, s.gate_prefix, min(s.gate_limit) AS gate_limit,
           count(*) > 1 OR bool_or(s.kind = 'map') AS spread,
           min(s.rate_limit) AS rate_limit, min(s.rate_per_ms) AS rate_per_ms,
           min(s.rate_scope) AS rate_scope, bool_or(s.rate_keyed) AS rate_keyed,
           bool_and(s.gate_path IS NULL) AS one_key
    FROM unnest(p_slugs, p_versions) AS f(slug, version)
    CROSS JOIN LATERAL (SELECT fs.gate_prefix, fs.gate_limit, fs.kind, fs.rate_limit,
                               fs.rate_per_ms, fs.rate_scope, fs.rate_keyed, fs.gate_path
                        FROM flowreg.flow_steps fs
                        WHERE fs.flow_slug = f.slug AND fs.version = f.version
                          AND fs.gate_prefix IS NOT NULL OFFSET 0) s
    GROUP BY f.slug, f.version, s.gate_prefix
    ORDER BY f.slug, f.version, s.gate_prefix
  LOOP
    EXIT WHEN cardinality(v_ids) >= p_room OR v_visits >= 4 * p_room + 32;
    v_name := g.slug || ' ' || g.version || ' ' || g.gate_prefix;
    v_rate := g.rate_limit IS NOT NULL AND g.gate_prefix <> ':';
    v_keyed := v_rate AND g.rate_keyed;
    v_rlock := v_rate AND g.rate_scope = '' AND g.rate_keyed;
    v_plen := length(g.gate_prefix);
    v_tok := NULL;
    v_cap := g.rate_limit;
    v_levels := ARRAY(SELECT l.priority FROM flowreg.queue_levels l
                      WHERE l.flow_slug = g.slug AND l.flow_version = g.version
                      UNION SELECT 0 ORDER BY 1 DESC);
    IF v_rate AND NOT v_keyed THEN
      -- One bucket for all the gate's keys, in shards (_rate_shards): from the one this backend
      -- tries first, each shard's lock (skipped when another claim holds it), then its tokens
      -- now, in a new statement, until the shards locked have the tokens the room left needs.
      -- v_tok: their whole tokens. When the others were held, the last shard it tries of the
      -- first such bucket of this call is waited for (every claim of the gate takes one, so
      -- skipping them all would leave workers idle; its holder waits for no other lock, so the
      -- wait ends with the holder's transaction); a later bucket's is skipped.
      v_shards := flowreg._rate_shards(g.rate_limit);
      v_cap := g.rate_limit::float8 / v_shards;
      v_first := pg_backend_pid() % v_shards;
      v_skeys := '{}';
      v_stoks := '{}';
      v_tok := 0;
      v_held := false;
      FOR v_shard IN v_first .. v_first + v_shards - 1 LOOP
        EXIT WHEN v_tok >= p_room - cardinality(v_ids);
        v_key := flowreg._rate_shard_key(v_shard, v_shards);
        IF cardinality(v_skeys) = 0 AND v_shard = v_first + v_shards - 1 AND NOT v_waited THEN
          PERFORM pg_advisory_xact_lock(hashtext(g.slug),
                                        hashtext('rate ' || g.rate_scope || ':' || v_key));
          v_waited := true;
        ELSIF NOT pg_try_advisory_xact_lock(hashtext(g.slug),
                                            hashtext('rate ' || g.rate_scope || ':' || v_key)) THEN
          v_held := true;
          CONTINUE;
        END IF;
        SELECT least(v_cap, b.tokens + extract(epoch FROM now() - b.at)::float8 * 1000
                                       * v_cap / g.rate_per_ms)
        INTO v_t
        FROM flowreg.rate_buckets b
        WHERE b.flow_slug = g.slug AND b.scope = g.rate_scope AND b.key = v_key;
        v_t := coalesce(v_t, v_cap);
        v_skeys := v_skeys || v_key::text;
        v_stoks := v_stoks || v_t;
        v_tok := v_tok + floor(v_t);
      END LOOP;
      IF v_held AND v_tok < p_room - cardinality(v_ids) THEN
        -- A shard another claim held (until its transaction ends): this worker looks again soon.
        v_due := least(v_due, clock_timestamp() + interval '2 ms');
      END IF;
      IF v_tok < 1 THEN
        IF cardinality(v_skeys) > 0 THEN
          v_due := least(v_due, now() + (least(g.rate_limit, p_room) - v_tok) * g.rate_per_ms
                                        / g.rate_limit * interval '1 ms');
        END IF;
        CONTINUE;
      END IF;
    END IF;
    -- The prefix's keys lie in [prefix, prefix with its last ':' turned into ';').
    v_end := left(g.gate_prefix, -1) || ';';
    v_spent := false;
    -- One pass per level, highest first (migration 0033): a pass visits the keys with a queued
    -- task of its level and takes their tasks of that level and higher ones, so that every key's
    -- higher-priority tasks come before any key's lower ones. A limit without `key` has one key:
    -- one pass, its tasks taken highest first.
    FOREACH v_lv IN ARRAY CASE WHEN g.one_key THEN ARRAY[NULL::int] ELSE v_levels END LOOP
      EXIT WHEN v_spent OR cardinality(v_ids) >= p_room OR v_visits >= 4 * p_room + 32;
      v_above := ARRAY(SELECT x.p FROM unnest(v_levels) AS x(p) WHERE x.p >= v_lv OR v_lv IS NULL
                      ORDER BY x.p DESC);
      v_cname := v_name || ' ' || coalesce(v_lv, 0);
      v_last := NULL;
      -- From the key after the cursor (the smallest text after a key is the key and U+0001), or
      -- the first key; once at the end, from the first key again up to the cursor.
      v_start := v_cursors->>v_cname;
      IF v_start < g.gate_prefix OR v_start >= v_end THEN
        v_start := NULL;
      END IF;
      v_from := coalesce(v_start || chr(1), g.gate_prefix);
      v_upto := v_end;
      v_wrapped := v_start IS NULL;
      LOOP
        EXIT WHEN cardinality(v_ids) >= p_room OR v_visits >= 4 * p_room + 32;
        IF g.one_key THEN
          -- A limit without `key`: its one key, "", once (no keys to look for, no cursor).
          EXIT WHEN v_last IS NOT NULL;
          v_keys := ARRAY[g.gate_prefix::text];
        ELSE
          -- The next keys with a queued task in [v_from, v_upto): a skip scan of tasks_gated, one
          -- probe per key, stopped by the LIMIT below.
          WITH RECURSIVE k(gate) AS (
            (SELECT q.gate FROM flowreg.tasks q
             WHERE q.status = 'queued' AND q.gate IS NOT NULL AND q.flow_slug = g.slug
               AND q.flow_version = g.version AND q.priority = v_lv AND q.gate >= v_from
               AND q.gate < v_upto
             ORDER BY q.gate LIMIT 1)
            UNION ALL
            SELECT (SELECT q.gate FROM flowreg.tasks q
                    WHERE q.status = 'queued' AND q.gate IS NOT NULL AND q.flow_slug = g.slug
                      AND q.flow_version = g.version AND q.priority = v_lv AND q.gate > k.gate
                      AND q.gate < v_upto
                    ORDER BY q.gate LIMIT 1)
            FROM k WHERE k.gate IS NOT NULL
          )
          SELECT array_agg(x.gate) INTO v_keys
          FROM (SELECT k.gate FROM k WHERE k.gate IS NOT NULL
                LIMIT greatest(p_room - cardinality(v_ids), 16)) x;
          IF v_keys IS NULL THEN
            EXIT WHEN v_wrapped;
            v_wrapped := true;
            v_from := g.gate_prefix;
            v_upto := v_start || chr(1);  -- up to the cursor's key, included
            CONTINUE;
          END IF;
        END IF;
        v_last := v_keys[cardinality(v_keys)];
        v_from := v_last || chr(1);
        v_visits := v_visits + cardinality(v_keys);
        -- Their locks, in one statement; the keys another claim holds are skipped. (And their
        -- buckets' locks, when the flow's rate limit has a bucket per key. A gate without a
        -- concurrency limit and with one bucket needs no key lock: the bucket's serves.)
        IF g.gate_limit IS NULL AND v_rate AND NOT v_keyed THEN
          v_locked := v_keys;
        ELSE
          SELECT array_agg(x.k ORDER BY x.i) INTO v_locked
          FROM unnest(v_keys) WITH ORDINALITY AS x(k, i)
          WHERE pg_try_advisory_xact_lock(hashtext(g.slug), hashtext(x.k))
            AND (NOT v_rlock
                 OR pg_try_advisory_xact_lock(hashtext(g.slug),
                                              hashtext('rate :' || substr(x.k, v_plen + 1))));
        END IF;
        IF coalesce(cardinality(v_locked), 0) < cardinality(v_keys) THEN
          -- A key another claim holds (until its transaction ends): this worker looks again soon,
          -- not at its next poll.
          v_due := least(v_due, clock_timestamp() + interval '2 ms');
        END IF;
        CONTINUE WHEN v_locked IS NULL;
        v_got := NULL;
        v_cn := 0;
        v_lim := p_room - cardinality(v_ids);
        IF g.gate_prefix = ':' THEN
          -- A flow's gate. The runs holding the keys' slots that ended (or were pruned) let go
          -- (each holder's run read by primary key, a scalar subquery: never an anti join that a
          -- plan could run over all of runs_pkey); then, in a new statement (a snapshot taken
          -- after the locks), per key its free slots, its first due tasks as many, their runs
          -- still started admitted, and the tasks claimed.
          DELETE FROM flowreg.gate_holders h
          WHERE h.flow_slug = g.slug AND h.gate = ANY (v_locked)
            AND (SELECT r.status FROM flowreg.runs r WHERE r.id = h.run_id)
                IS DISTINCT FROM 'started';
          WITH c AS (
            SELECT q.id, q.run_id, q.gate
            FROM unnest(v_locked) WITH ORDINALITY AS x(k, i)
            CROSS JOIN LATERAL (
              SELECT g.gate_limit - count(*) AS n FROM flowreg.gate_holders h
              WHERE h.flow_slug = g.slug AND h.gate = x.k) f
            CROSS JOIN LATERAL (
              SELECT q.id, q.run_id, q.gate FROM unnest(v_above) AS lv(p)
              CROSS JOIN LATERAL (
                SELECT q.id, q.run_id, q.gate FROM flowreg.tasks q
                WHERE q.status = 'queued' AND q.gate IS NOT NULL AND q.flow_slug = g.slug
                  AND q.flow_version = g.version AND q.gate = x.k AND q.priority = lv.p
                  AND q.available_at <= now()
                ORDER BY q.available_at
                LIMIT greatest(f.n, 0)
                FOR UPDATE SKIP LOCKED) q
              LIMIT greatest(f.n, 0)) q
            LIMIT v_lim
          ),
          live AS (
            SELECT r.id FROM flowreg.runs r WHERE r.id = ANY (ARRAY(SELECT c.run_id FROM c))
              AND r.status = 'started'
          ),
          admitted AS MATERIALIZED (
            SELECT DISTINCT live.id, c.gate FROM live JOIN c ON c.run_id = live.id
          ),
          held AS (
            INSERT INTO flowreg.gate_holders (flow_slug, gate, run_id)
            SELECT g.slug, a.gate, a.id FROM admitted a
            ON CONFLICT DO NOTHING
          ),
          claimed AS (
            UPDATE flowreg.tasks t
            SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker,
                started_at = now(), lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms),
                gate = NULL
            WHERE t.id = ANY (ARRAY(SELECT c.id FROM c WHERE c.run_id IN (SELECT a.id
                                                                           FROM admitted a)))
            RETURNING t AS task, t.run_id
          )
          SELECT array_agg(claimed.task), array_agg(DISTINCT claimed.run_id),
                 (SELECT max(c.gate COLLATE "C") FROM c), (SELECT count(*) FROM c)
          INTO v_got, v_runs, v_reach, v_cn
          FROM claimed;
          IF v_runs IS NOT NULL AND g.spread THEN
            -- The admitted runs' other gated tasks (another root step's, a map root's elements):
            -- claimed as any task. Found by run (tasks_by_run; the status written `status || ''`,
            -- so that no plan walks tasks_gated instead).
            UPDATE flowreg.tasks t SET gate = NULL
            WHERE t.run_id = ANY (v_runs) AND NOT t.solo AND t.status || '' = 'queued'
              AND t.gate IS NOT NULL;
          END IF;
        ELSE
          -- A step's gate: per key (a new statement: a snapshot taken after the locks) its tasks
          -- running, of any version of the flow (counted up to the limit; none without a
          -- concurrency limit) and its bucket's tokens (a rate limit with a bucket per key), then
          -- its first due tasks, as many as both allow, and as many as the one bucket's tokens in
          -- all. The tokens taken are written to the buckets.
          v_lim := least(v_lim, floor(coalesce(v_tok, p_room))::int);
          WITH kk AS MATERIALIZED (
            SELECT x.k, x.i,
                   CASE WHEN g.gate_limit IS NULL THEN p_room
                        ELSE g.gate_limit - (SELECT count(*)
                                             FROM (SELECT FROM flowreg.tasks t
                                                   WHERE t.status = 'started' AND t.gate IS NOT NULL
                                                     AND t.gate < '|' AND t.flow_slug = g.slug
                                                     AND t.gate = x.k
                                                   LIMIT g.gate_limit) a) END AS n,
                   CASE WHEN v_keyed THEN
                     coalesce((SELECT least(g.rate_limit,
                                            b.tokens + extract(epoch FROM now() - b.at)::float8
                                                       * 1000 * g.rate_limit / g.rate_per_ms)
                               FROM flowreg.rate_buckets b
                               WHERE b.flow_slug = g.slug AND b.scope = g.rate_scope
                                 AND b.key = substr(x.k, v_plen + 1)), g.rate_limit) END AS tok
            FROM unnest(v_locked) WITH ORDINALITY AS x(k, i)
          ),
          c AS (
            SELECT q.id, kk.k AS gate
            FROM kk
            CROSS JOIN LATERAL (
              SELECT q.id FROM unnest(v_above) AS lv(p)
              CROSS JOIN LATERAL (
                SELECT q.id FROM flowreg.tasks q
                WHERE q.status = 'queued' AND q.gate IS NOT NULL AND q.flow_slug = g.slug
                  AND q.flow_version = g.version AND q.gate = kk.k AND q.priority = lv.p
                  AND q.available_at <= now()
                ORDER BY q.available_at
                LIMIT greatest(least(kk.n, floor(coalesce(kk.tok, kk.n))::bigint), 0)
                FOR UPDATE SKIP LOCKED) q
              LIMIT greatest(least(kk.n, floor(coalesce(kk.tok, kk.n))::bigint), 0)) q
            LIMIT v_lim
          ),
          claimed AS (
            UPDATE flowreg.tasks t
            SET status = 'started', attempt = t.attempt + 1, worker_id = p_worker,
                started_at = now(), lease_expires_at = flowreg._lease_end(t.timeout_ms, p_lease_ms)
            WHERE t.id = ANY (ARRAY(SELECT c.id FROM c))
            RETURNING t AS task, t.id, t.gate
          ),
          spent AS (
            -- (A bucket per key: the key's tasks claimed. The one bucket's shards: the tasks
            -- claimed, taken from the shards locked in order, each up to its whole tokens.)
            INSERT INTO flowreg.rate_buckets AS b (flow_slug, scope, key, tokens, at)
            SELECT g.slug, g.rate_scope, substr(cl.gate, v_plen + 1), v_cap - count(*), now()
            FROM claimed cl WHERE v_keyed
            GROUP BY 3
            UNION ALL
            SELECT g.slug, g.rate_scope, s.key, v_cap - s.take, now()
            FROM (SELECT x.key,
                         least(floor(x.tok),
                               greatest(n.n - (sum(floor(x.tok)) OVER (ORDER BY x.i)
                                               - floor(x.tok)), 0)) AS take
                  FROM unnest(v_skeys, v_stoks) WITH ORDINALITY AS x(key, tok, i)
                  CROSS JOIN (SELECT count(*) AS n FROM claimed) n) s
            WHERE v_rate AND NOT v_keyed AND s.take > 0
            ON CONFLICT (flow_slug, scope, key) DO UPDATE
            SET tokens = least(v_cap, b.tokens + extract(epoch FROM now() - b.at)::float8
                                                 * 1000 * v_cap / g.rate_per_ms)
                         - (v_cap - excluded.tokens),
                at = now()
          )
          SELECT (SELECT array_agg(cl.task) FROM claimed cl),
                 (SELECT min(kk.tok - (SELECT count(*) FROM claimed cl WHERE cl.gate = kk.k))
                  FROM kk WHERE v_keyed),
                 (SELECT max(c.gate COLLATE "C") FROM c), (SELECT count(*) FROM c)
          INTO v_got, v_min_tok, v_reach, v_cn;
          IF v_rate THEN
            -- A bucket left without a whole token: the worker claims again when it has one (the
            -- one bucket: as many as a claim takes).
            IF v_keyed AND v_min_tok < 1 THEN
              v_due := least(v_due, now() + (1 - v_min_tok) * g.rate_per_ms / g.rate_limit
                                            * interval '1 ms');
            ELSIF NOT v_keyed THEN
              v_tok := v_tok - coalesce(cardinality(v_got), 0);
              -- What each shard has left, for the next round's tasks (as `spent` took them).
              v_n := coalesce(cardinality(v_got), 0);
              FOR v_i IN 1 .. cardinality(v_stoks) LOOP
                v_take := least(floor(v_stoks[v_i]), v_n);
                v_stoks[v_i] := v_stoks[v_i] - v_take;
                v_n := v_n - v_take;
              END LOOP;
              IF v_tok < 1 THEN
                v_due := least(v_due, now() + (least(g.rate_limit, p_room) - v_tok) * g.rate_per_ms
                                              / g.rate_limit * interval '1 ms');
                v_ids := v_ids || coalesce(v_got, '{}');
                -- The keys after the last served wait for the next tokens: the cursor stays there.
                v_last := coalesce((SELECT max(x.gate) FROM unnest(v_got) x), v_last);
                v_spent := true;
                EXIT;
              END IF;
            END IF;
          END IF;
        END IF;
        v_ids := v_ids || coalesce(v_got, '{}');
        IF v_cn >= v_lim THEN
          -- The statement stopped at its limit, at the key v_reach: the keys after it were not
          -- served. The cursor stays there, and the next round goes on after it.
          v_last := v_reach;
          v_from := v_reach || chr(1);
        END IF;
      END LOOP;
      IF v_last IS NOT NULL AND NOT g.one_key AND v_cursors->>v_cname IS DISTINCT FROM v_last THEN
        v_cursors := jsonb_set(v_cursors, ARRAY[v_cname], to_jsonb(v_last));
        v_moved := true;
      END IF;
    END LOOP;
  END LOOP;
  IF v_moved THEN
    -- Session-wide (not local): the next claim of this connection goes on from here. A cursor
    -- per gate and priority level of the flows served; a few hundred bytes.
    v_set := set_config('flowreg.gate_cursors', v_cursors::text, false);
  END IF;
  IF v_due IS NOT NULL THEN
    -- For work(): the earliest time a rate-limited gate visited has tokens again.
    v_set := set_config('flowreg.rate_due', v_due::text, true);
  END IF;
  RETURN v_ids;
END $$;

-- Every statement probes an index by key (tasks_gated, tasks_gate_running, gate_holders' and
-- the other primary keys), whatever the statistics of the moment (see _claim).
ALTER FUNCTION flowreg._claim_gated(text, text[], text[], int, bigint)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
  SET jit = off;
