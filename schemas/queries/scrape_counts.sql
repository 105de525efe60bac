-- Runs started and ended in the window are counted per flow slug (_run_slugs) through
-- runs_by_flow (migrations 0015 and 0016), in one range scan per flow of the runs created from
-- the flow's bound on (finished_at has no index, so that completing a run stays a HOT update), and
-- by primary key for the flow's stragglers. A flow's bound ($2, a JSON object of microseconds by
-- slug; $1 for a flow it does not list) is the start of the flow's oldest run the previous scrape
-- saw not ended by its window's end ($1), stragglers aside; its stragglers ($3, a JSON object of
-- arrays of run ids by slug) are the other runs it saw not ended, all started before the bound. A
-- run that ends in this window was either not ended by then (so it is a straggler or started at
-- its flow's bound or later), or was not yet committed then: it started after $1 (unless its
-- transaction was older than the 3 s lag, which the count of runs started assumes too).
-- The next scrape's state, per flow, from the runs not ended by this window's end (still started,
-- or ended after it): those started before this window ($1), when there are any, are found by a
-- walk of the range from the bound up to $1 in start order that stops after $4 + 1 of them (the
-- range scan counts them); with the stragglers still not ended, the $4 oldest are the next
-- stragglers, and the next bound is the start of the oldest of the others, or of the oldest run
-- started since $1 that is not ended, or this window's end. So a scrape reads each flow's runs
-- created since its oldest run not ended at the previous scrape, not the history, and a run left
-- started for days costs a probe by id, once it has been seen across two scrapes; only more than
-- $4 such runs in one flow make the scrapes read its runs since the oldest of the others.
-- The first scrape ($1 < 0) counts nothing: it looks for each flow's bound alone, reading each
-- flow's runs up to its oldest not ended.
-- Queued and started tasks are counted per flow slug from their rows (neither partial index holds
-- the slug itself); at_us of a flow's 'tasks' row is when its oldest queued task ready now (not
-- waiting for a retry's delay) became ready, 0 when none is.
WITH w AS MATERIALIZED (SELECT now() - interval '3 seconds' AS upto,
  'epoch'::timestamptz + $1::bigint * interval '1 microsecond' AS since),
 slugs AS MATERIALIZED (SELECT s.slug, coalesce('epoch'::timestamptz
   + ($2::jsonb ->> s.slug)::bigint * interval '1 microsecond', w.since) AS live_from,
  ARRAY(SELECT jsonb_array_elements_text($3::jsonb -> s.slug))::uuid[] AS ids
  FROM flowreg._run_slugs() AS s(slug) CROSS JOIN w),
 per AS MATERIALIZED (SELECT s.slug, c.* FROM slugs s CROSS JOIN w
  CROSS JOIN LATERAL (SELECT r.status,
    count(*) FILTER (WHERE r.created_at > w.since AND r.created_at <= w.upto) AS started,
    count(*) FILTER (WHERE r.finished_at > w.since AND r.finished_at <= w.upto) AS ended,
    min(r.created_at) FILTER (WHERE (r.status = 'started' OR r.finished_at > w.upto)
     AND r.created_at >= w.since) AS live_new,
    count(*) FILTER (WHERE (r.status = 'started' OR r.finished_at > w.upto)
     AND r.created_at < w.since) AS live_old
   FROM flowreg.runs r
   WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(s.slug, 0)
   AND r.flow_slug = s.slug AND r.created_at >= s.live_from GROUP BY r.status) c
  WHERE $1::bigint >= 0),
-- One primary-key probe per straggler (OFFSET 0: never a join the planner could make a scan).
 strag AS MATERIALIZED (SELECT s.slug, r.* FROM slugs s CROSS JOIN unnest(s.ids) AS x(id)
  CROSS JOIN LATERAL (SELECT r.id, r.created_at, r.status, r.finished_at FROM flowreg.runs r
   WHERE r.id = x.id AND r.flow_slug = s.slug AND r.created_at < s.live_from OFFSET 0) r
  WHERE $1::bigint >= 0),
 walk AS MATERIALIZED (SELECT s.slug, x.* FROM slugs s CROSS JOIN w
  CROSS JOIN LATERAL (SELECT r.id, r.created_at FROM flowreg.runs r
   WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(s.slug, 0)
   AND r.flow_slug = s.slug AND r.created_at >= s.live_from AND r.created_at < w.since
   AND (r.status = 'started' OR r.finished_at > w.upto)
   ORDER BY r.created_at LIMIT $4::int + 1) x
  WHERE $1::bigint >= 0 AND (SELECT sum(p.live_old) FROM per p WHERE p.slug = s.slug) > 0),
 first AS MATERIALIZED (SELECT s.slug, l.live FROM slugs s CROSS JOIN w
  CROSS JOIN LATERAL (SELECT r.created_at AS live FROM flowreg.runs r
   WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(s.slug, 0)
   AND r.flow_slug = s.slug AND (r.status = 'started' OR r.finished_at > w.upto)
   ORDER BY r.created_at LIMIT 1) l
  WHERE $1::bigint < 0),
-- The candidates for the next stragglers: the stragglers not ended, and the walk's runs.
 ranked AS MATERIALIZED (SELECT c.slug, c.id, c.created_at,
   row_number() OVER (PARTITION BY c.slug ORDER BY c.created_at, c.id) AS n
  FROM (SELECT st.slug, st.id, st.created_at FROM strag st CROSS JOIN w
        WHERE st.status = 'started' OR st.finished_at > w.upto
        UNION ALL SELECT k.slug, k.id, k.created_at FROM walk k) c),
-- The next bound: the oldest run not ended that is not among the $4 oldest candidates, else
-- started in this window, else upto. (A walk stopped at $4 + 1 rows left only runs started
-- after its last, which the candidates' ($4 + 1)th is not after.)
 bound AS MATERIALIZED (SELECT s.slug, least(w.upto,
   (SELECT min(p.live_new) FROM per p WHERE p.slug = s.slug),
   (SELECT k.created_at FROM ranked k WHERE k.slug = s.slug AND k.n = $4::int + 1),
   (SELECT f.live FROM first f WHERE f.slug = s.slug)) AS live_from
  FROM slugs s CROSS JOIN w)
 SELECT 'tasks' AS kind, flow_slug, '' AS status, sum(q)::bigint AS queued,
  sum(r)::bigint AS running, coalesce(min(ready_us), 0)::bigint AS at_us, '' AS run_id
 FROM (SELECT flow_slug, count(*) AS q, 0 AS r,
        (extract(epoch FROM min(available_at) FILTER (WHERE available_at <= now()))
         * 1000000)::bigint AS ready_us
       FROM flowreg.tasks WHERE status = 'queued' AND gate IS NULL GROUP BY flow_slug
       -- (the queued tasks with a gate: a concurrency limit's, migration 0023)
       UNION ALL SELECT flow_slug, count(*), 0,
        (extract(epoch FROM min(available_at) FILTER (WHERE available_at <= now()))
         * 1000000)::bigint
       FROM flowreg.tasks WHERE status = 'queued' AND gate IS NOT NULL GROUP BY flow_slug
       UNION ALL SELECT flow_slug, 0, count(*), NULL FROM flowreg.tasks WHERE status = 'started'
       GROUP BY flow_slug) t GROUP BY flow_slug
 UNION ALL SELECT 'runs', slug, 'started', sum(started)::bigint, 0, 0, '' FROM per
  GROUP BY slug HAVING sum(started) > 0
 UNION ALL SELECT 'runs', e.slug, e.status, sum(e.n)::bigint, 0, 0, ''
  FROM (SELECT slug, status, ended AS n FROM per
        UNION ALL SELECT st.slug, st.status, 1 FROM strag st CROSS JOIN w
        WHERE st.finished_at > w.since AND st.finished_at <= w.upto) e
  GROUP BY e.slug, e.status HAVING sum(e.n) > 0
 UNION ALL SELECT 'live', b.slug, '', 0, 0,
  (extract(epoch FROM b.live_from) * 1000000)::bigint, ''
  FROM bound b CROSS JOIN w WHERE b.live_from < w.upto
 UNION ALL SELECT 'straggler', k.slug, '', 0, 0, 0, k.id::text
  FROM ranked k JOIN bound b ON b.slug = k.slug WHERE k.created_at < b.live_from
 UNION ALL SELECT 'upto', '', '', 0, 0, (extract(epoch FROM w.upto) * 1000000)::bigint, ''
  FROM w
