-- Retention (docs/operations.md#retention): deletes the ended runs whose time is up, at most
-- p_limit of them, with what they keep in other tables. A run's time is up when it finished more
-- than its flow's age for its status before p_at: the flow's `retention` (stored in its
-- definition, version stored last: {"completed_ms", "failed_ms", "cancelled_ms"}, each a number
-- of milliseconds, or null to keep such runs) where it says, else the caller's default
-- (p_completed_ms, p_failed_ms, p_cancelled_ms; NULL: keep). A run still started is never
-- deleted. Returns how many runs it deleted and where the next batch of the same p_at starts, as
-- prune does; the walk is _remove_ended's, with each flow's cutoffs, and down to each flow's floor
-- less a second (flowreg.retention.floors, migration 0034: its oldest run at the end of the last
-- round), not further; unless the last round that walked every run (swept_at) was an hour or more
-- before p_at, or there was none: then the walk goes down to each flow's oldest entry (every batch
-- of a round has the same p_at: the same choice).
CREATE OR REPLACE FUNCTION flowreg.retain(p_at timestamptz, p_completed_ms bigint,
                                          p_failed_ms bigint, p_cancelled_ms bigint, p_limit int,
                                          p_slug text, p_created timestamptz, OUT deleted bigint,
                                          OUT last_slug text, OUT last_created timestamptz)
LANGUAGE sql AS $$
  WITH own AS MATERIALIZED (
    -- Each flow with runs, the retention of its version stored last ({} when none), and its floor.
    SELECT s.slug, coalesce((SELECT fl.definition -> 'retention' FROM flowreg.flows fl
                             WHERE fl.slug = s.slug ORDER BY fl.created_at DESC LIMIT 1),
                            '{}'::jsonb) AS r,
           (SELECT (rt.floors ->> s.slug)::timestamptz - interval '1 s'
            FROM flowreg.retention rt
            WHERE rt.id = true AND rt.swept_at > p_at - interval '1 hour') AS floor
    FROM flowreg._run_slugs() AS s(slug)
  ),
  cut AS (
    SELECT o.slug,
           p_at - CASE WHEN o.r ? 'completed_ms' THEN (o.r ->> 'completed_ms')::bigint
                       ELSE p_completed_ms END * interval '1 ms' AS c,
           p_at - CASE WHEN o.r ? 'failed_ms' THEN (o.r ->> 'failed_ms')::bigint
                       ELSE p_failed_ms END * interval '1 ms' AS x,
           p_at - CASE WHEN o.r ? 'cancelled_ms' THEN (o.r ->> 'cancelled_ms')::bigint
                       ELSE p_cancelled_ms END * interval '1 ms' AS k,
           o.floor
    FROM own o
  )
  SELECT d.deleted, d.last_slug, d.last_created
  FROM (SELECT array_agg(c.slug ORDER BY c.slug) AS slugs, array_agg(c.c ORDER BY c.slug) AS c,
               array_agg(c.x ORDER BY c.slug) AS x, array_agg(c.k ORDER BY c.slug) AS k,
               array_agg(c.floor ORDER BY c.slug) AS floors
        FROM cut c) a
  CROSS JOIN LATERAL flowreg._remove_ended(a.slugs, a.c, a.x, a.k, a.floors, p_limit, p_slug,
                                           p_created) AS d
$$;

-- The probe of flows (its primary key, by slug) stays an index scan.
ALTER FUNCTION flowreg.retain(timestamptz, bigint, bigint, bigint, int, text, timestamptz)
  SET enable_seqscan = off SET jit = off;
