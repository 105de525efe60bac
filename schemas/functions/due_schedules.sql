-- Up to p_limit schedules of the flows p_flows (a JSON array of slugs) due now, the most overdue
-- first, locked for the caller's transaction (FOR UPDATE SKIP LOCKED: two workers reading at once
-- take different schedules), after a first row with name NULL holding the server's now and the
-- earliest next tick of those flows' schedules not due yet (for the scheduler's sleep);
-- timestamps as microseconds since the epoch. A worker calls it every poll interval: both reads
-- walk schedules_due (migration 0021), at any size of the table and whatever its statistics say
-- (sequential and bitmap scans off).
CREATE OR REPLACE FUNCTION flowreg.due_schedules(p_flows jsonb, p_limit int)
RETURNS TABLE (name text, flow_slug text, cron text, timezone text, input text, time_key text,
               catch_up text, catch_up_max int, overlap text, next_fire_at_us bigint,
               now_us bigint, next_us bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_slugs text[] := ARRAY(SELECT jsonb_array_elements_text(p_flows));
BEGIN
  RETURN QUERY
    SELECT NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
           NULL::int, NULL::text, NULL::bigint, (extract(epoch FROM now()) * 1000000)::bigint,
           (SELECT (extract(epoch FROM s.next_fire_at) * 1000000)::bigint
            FROM flowreg.schedules s
            WHERE NOT s.paused AND s.next_fire_at > now() AND s.flow_slug = ANY (v_slugs)
            ORDER BY s.next_fire_at LIMIT 1);
  RETURN QUERY
    SELECT s.name, s.flow_slug, s.cron, s.timezone, s.input::text, s.time_key, s.catch_up,
           s.catch_up_max, s.overlap, (extract(epoch FROM s.next_fire_at) * 1000000)::bigint,
           NULL::bigint, NULL::bigint
    FROM flowreg.schedules s
    WHERE NOT s.paused AND s.next_fire_at <= now() AND s.flow_slug = ANY (v_slugs)
    ORDER BY s.next_fire_at LIMIT p_limit
    FOR UPDATE OF s SKIP LOCKED;
END $$;

ALTER FUNCTION flowreg.due_schedules(jsonb, int)
  SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
  SET jit = off;
