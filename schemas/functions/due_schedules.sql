-- Up to p_limit schedules of the flows p_flows (a JSON array of slugs) due now, the most overdue
-- first, and the earliest next tick of those flows' schedules not due yet (for the scheduler's
-- sleep), as a first row with name NULL; timestamps as microseconds since the epoch. A worker
-- calls it every poll interval: both reads walk schedules_due (migration 0021), at any size of the
-- table and whatever its statistics say (sequential and bitmap scans off).
CREATE OR REPLACE FUNCTION flowreg.due_schedules(p_flows jsonb, p_limit int)
RETURNS TABLE (name text, flow_slug text, cron text, timezone text, input text, time_key text,
               catch_up text, catch_up_max int, overlap text, next_fire_at_us bigint,
               now_us bigint, next_us bigint)
LANGUAGE sql STABLE AS $$
  WITH f AS (SELECT array_agg(x) AS slugs FROM jsonb_array_elements_text(p_flows) AS x)
  SELECT NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
         NULL::int, NULL::text, NULL::bigint, (extract(epoch FROM now()) * 1000000)::bigint,
         (SELECT (extract(epoch FROM s.next_fire_at) * 1000000)::bigint
          FROM flowreg.schedules s, f
          WHERE NOT s.paused AND s.next_fire_at > now() AND s.flow_slug = ANY (f.slugs)
          ORDER BY s.next_fire_at LIMIT 1)
  UNION ALL
  (SELECT s.name, s.flow_slug, s.cron, s.timezone, s.input::text, s.time_key, s.catch_up,
          s.catch_up_max, s.overlap, (extract(epoch FROM s.next_fire_at) * 1000000)::bigint,
          NULL::bigint, NULL::bigint
   FROM flowreg.schedules s, f
   WHERE NOT s.paused AND s.next_fire_at <= now() AND s.flow_slug = ANY (f.slugs)
   ORDER BY s.next_fire_at LIMIT p_limit)
$$;

ALTER FUNCTION flowreg.due_schedules(jsonb, int)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
  SET jit = off;
