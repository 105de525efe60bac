-- A run by id, with the columns of a run (run_of reads them, the same as list_runs.sql's;
-- start_at_us and scheduled: a delayed start's, migration 0020), and its concurrency limits
-- (migration 0023): held_key, the key of its flow's limit whose slot it holds (its first task
-- was claimed, and it has not ended: its gate_holders row, found by the key its input gives; or
-- runs.gate, which earlier releases wrote when they admitted a run); gate_*, a task of it waiting
-- for a slot: its step ('' for the flow's limit), key, limit, and the runs or tasks holding the
-- key's slots now (at most the limit, counted; gate_limit NULL: no concurrency limit); rate_*, the
-- rate limit over that task (migration 0024), and when its bucket has a token again, if it has
-- none now.
-- Child flows (migration 0028): parent_* (the run whose flow step started it), children (its
-- child runs, the first 100 by step and element, as JSON) and children_total.
-- Timestamps travel as microseconds since the epoch, in columns whose names end in _us.
SELECT r.id::text AS id, r.flow_slug, r.flow_version, r.status, r.input::text AS input,
 r.output::text AS output, r.error, (extract(epoch FROM r.created_at) * 1000000)::bigint AS
 created_at_us, (extract(epoch FROM r.finished_at) * 1000000)::bigint AS finished_at_us,
 r.retry_of::text AS retry_of, r.idempotency_key,
 (extract(epoch FROM r.start_at) * 1000000)::bigint AS start_at_us, r.priority,
 (r.status = 'started' AND r.start_at > now()) IS TRUE AS scheduled,
 CASE WHEN r.status = 'started' THEN
  coalesce(substr(r.gate, 2),
           (SELECT substr(h.gate, 2) FROM flowreg.flow_steps fs
            JOIN flowreg.gate_holders h ON h.flow_slug = r.flow_slug
             AND h.gate = flowreg._gate_of(':', r.input, fs.gate_path) AND h.run_id = r.id
            WHERE fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
             AND fs.gate_prefix = ':'
            LIMIT 1)) END AS held_key,
 w.step_slug AS gate_step, w.key AS gate_key, w.gate_limit, w.holding AS gate_holding,
 w.rate_limit, w.rate_per_ms,
 (extract(epoch FROM now() + (1 - w.tokens) * w.rate_per_ms * w.rate_shards / w.rate_limit
                  * interval '1 ms') * 1000000)::bigint AS rate_until_us,
 r.parent_run_id::text AS parent_run_id, r.parent_step, r.parent_index,
 CASE WHEN r.has_children THEN
  (SELECT jsonb_agg(jsonb_build_object('id', c.id, 'flow', c.flow_slug, 'step', c.parent_step,
                                       'index', c.parent_index, 'status', c.status)
                    ORDER BY c.parent_step, c.parent_index, c.id)
   FROM (SELECT c.id, c.flow_slug, c.parent_step, c.parent_index, c.status FROM flowreg.runs c
         WHERE c.parent_run_id = r.id ORDER BY c.parent_step, c.parent_index, c.id LIMIT 100) c)
  ::text END AS children,
 CASE WHEN r.has_children THEN
  (SELECT count(*) FROM flowreg.runs c WHERE c.parent_run_id = r.id)::int END AS children_total
 FROM flowreg.runs r
 LEFT JOIN LATERAL (
  SELECT CASE WHEN fs.gate_prefix = ':' THEN '' ELSE t.step_slug END AS step_slug,
   substr(t.gate, length(fs.gate_prefix) + 1) AS key, fs.gate_limit,
   fs.rate_limit, fs.rate_per_ms, rs.n AS rate_shards,
   -- The most tokens of its bucket's shards (a bucket per key, or a limit under 1,024: one
   -- shard; _rate_shards), each of limit / shards; NULL unless below a whole token in all.
   (SELECT max(coalesce(least(rs.cap, b.tokens + extract(epoch FROM now() - b.at)::float8
                                                 * 1000 * rs.cap / fs.rate_per_ms), rs.cap))
    FROM generate_series(0, rs.n - 1) AS i(shard)
    LEFT JOIN flowreg.rate_buckets b
     ON b.flow_slug = r.flow_slug AND b.scope = fs.rate_scope
      AND b.key = CASE WHEN fs.rate_keyed THEN substr(t.gate, length(fs.gate_prefix) + 1)
                       ELSE flowreg._rate_shard_key(i.shard, rs.n) END
    WHERE fs.rate_limit IS NOT NULL
    HAVING max(coalesce(least(rs.cap, b.tokens + extract(epoch FROM now() - b.at)::float8
                                                * 1000 * rs.cap / fs.rate_per_ms), rs.cap)) < 1)
    AS tokens,
   CASE WHEN fs.gate_limit IS NULL THEN NULL
    WHEN fs.gate_prefix = ':'
    THEN (SELECT count(*) FROM (SELECT FROM flowreg.gate_holders h
          WHERE h.flow_slug = r.flow_slug AND h.gate = t.gate
           AND (SELECT a.status FROM flowreg.runs a WHERE a.id = h.run_id) = 'started'
          LIMIT fs.gate_limit) h)
    ELSE (SELECT count(*) FROM (SELECT FROM flowreg.tasks a
          WHERE a.status = 'started' AND a.gate IS NOT NULL AND a.gate < '|'
           AND a.flow_slug = r.flow_slug
           AND a.gate = t.gate LIMIT fs.gate_limit) h) END::int AS holding
  -- Its queued tasks with a gate: the solo task it names, or its others (by run: tasks_by_run;
  -- the status written `status || ''`, so that no plan walks tasks_gated instead).
  FROM (SELECT q.step_slug, q.gate FROM flowreg.tasks q
        WHERE q.id = r.task_id AND q.status || '' = 'queued' AND q.gate IS NOT NULL
        UNION ALL
        SELECT q.step_slug, q.gate FROM flowreg.tasks q
        WHERE q.run_id = r.id AND NOT q.solo AND q.status || '' = 'queued'
         AND q.gate IS NOT NULL
        LIMIT 1) t
  JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
   AND fs.step_slug = t.step_slug
  CROSS JOIN LATERAL (
   SELECT n, fs.rate_limit::float8 / n AS cap
   FROM (SELECT CASE WHEN fs.rate_keyed THEN 1
                     ELSE flowreg._rate_shards(coalesce(fs.rate_limit, 0)) END AS n) n) rs
  ) w ON true
 WHERE r.id = $1::uuid
