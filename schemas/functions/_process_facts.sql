-- What one attempt run in a handler process cost (migration 0031), from a result's "process"
-- entry: {"pid", "cpu_us", "max_rss_kb", "handler_us", "signal", "exit_status",
-- "left_processes"}, whole numbers. One row, or none when p is not an object with a positive pid.
-- A value that is not a number reads as 0 (signal, exit_status: NULL) and one out of its range
-- (0 to the column's largest; signal, exit_status: to 255) is held to it, so that no entry can
-- fail its batch. (least and greatest skip NULLs: a NULL is never held to a bound.)
CREATE OR REPLACE FUNCTION flowreg._process_facts(
  p jsonb, OUT pid int, OUT cpu_us bigint, OUT max_rss_kb bigint, OUT handler_us bigint,
  OUT signal int, OUT exit_status int, OUT left_processes int)
RETURNS SETOF record LANGUAGE sql IMMUTABLE AS $$
  SELECT least(x.pid, 2147483647)::int, least(x.cpu_us, 9e18)::bigint,
         least(x.max_rss_kb, 9e18)::bigint, least(x.handler_us, 9e18)::bigint,
         x.signal::int, x.exit_status::int,
         least(coalesce(x.left_processes, 0), 2147483647)::int
  FROM (SELECT greatest(trunc(CASE WHEN jsonb_typeof(p->'pid') = 'number'
                                   THEN (p->'pid')::numeric END), 0) AS pid,
               greatest(trunc(CASE WHEN jsonb_typeof(p->'cpu_us') = 'number'
                                   THEN (p->'cpu_us')::numeric END), 0) AS cpu_us,
               greatest(trunc(CASE WHEN jsonb_typeof(p->'max_rss_kb') = 'number'
                                   THEN (p->'max_rss_kb')::numeric END), 0) AS max_rss_kb,
               greatest(trunc(CASE WHEN jsonb_typeof(p->'handler_us') = 'number'
                                   THEN (p->'handler_us')::numeric END), 0) AS handler_us,
               CASE WHEN jsonb_typeof(p->'signal') = 'number'
                    THEN least(greatest(trunc((p->'signal')::numeric), 0), 255)
               END AS signal,
               CASE WHEN jsonb_typeof(p->'exit_status') = 'number'
                    THEN least(greatest(trunc((p->'exit_status')::numeric), 0), 255)
               END AS exit_status,
               greatest(trunc(CASE WHEN jsonb_typeof(p->'left_processes') = 'number'
                                   THEN (p->'left_processes')::numeric END), 0) AS left_processes
        WHERE jsonb_typeof(p) = 'object') x
  WHERE x.pid > 0
$$;
