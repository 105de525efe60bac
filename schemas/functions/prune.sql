-- Deletes ended runs (with their steps and tasks) that finished before p_before: at most p_limit
-- of them (NULL: all), so that a caller deletes a long history in short transactions
-- (RunStore::prune: batches of kPruneBatch runs before one cutoff, until a call deletes fewer).
-- One transaction deleting a million runs runs for seconds (200,000 runs: 1.5 s, measured), and
-- while it runs VACUUM cannot clean anything newer than its start: the queue's dead rows and index
-- entries pile up under the workers' claims. Returns how many runs it deleted, and where the next
-- batch of the same cutoff starts: the flow slug of the last run deleted and the creation time of
-- the oldest run it deleted of that flow (NULL when it deleted none).
-- The walk is _remove_ended's, every flow's runs with the same cutoff.
CREATE OR REPLACE FUNCTION flowreg.prune(p_before timestamptz, p_limit int, p_slug text,
                                         p_created timestamptz, OUT deleted bigint,
                                         OUT last_slug text, OUT last_created timestamptz)
LANGUAGE sql AS $$
  SELECT d.deleted, d.last_slug, d.last_created
  FROM (SELECT array_agg(s.slug ORDER BY s.slug) AS slugs, array_agg(p_before) AS cutoffs
        FROM flowreg._run_slugs() AS s(slug)) a
  CROSS JOIN LATERAL flowreg._remove_ended(a.slugs, a.cutoffs, a.cutoffs, a.cutoffs,
                                           NULL::timestamptz[], p_limit, p_slug, p_created) AS d
$$;

-- The first batch of a cutoff (the form callers used before batches had positions).
CREATE OR REPLACE FUNCTION flowreg.prune(p_before timestamptz, p_limit int)
RETURNS bigint LANGUAGE sql AS $$
  SELECT p.deleted FROM flowreg.prune(p_before, p_limit, NULL, NULL) AS p
$$;

-- Every run that ended more than p_older_than ago, in one call (the form of the releases before
-- batches, kept for their callers).
CREATE OR REPLACE FUNCTION flowreg.prune(p_older_than interval)
RETURNS bigint LANGUAGE sql AS $$
  SELECT flowreg.prune(now() - p_older_than, NULL)
$$;

ALTER FUNCTION flowreg.prune(timestamptz, int, text, timestamptz) SET jit = off;
ALTER FUNCTION flowreg.prune(timestamptz, int) SET jit = off;
ALTER FUNCTION flowreg.prune(interval) SET jit = off;
