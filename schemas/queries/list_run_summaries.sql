-- The runs of a filter as summaries, newest first (created_at DESC, id): the columns of
-- list_runs.sql but the input and the output, which are never read (a list of runs with inputs of
-- 80 MB each read and sent every byte of them). Of those two, pg_column_size reads the size a
-- value takes in the table (compressed, or out of line in the TOAST table) from its header alone:
-- the value is neither fetched nor decompressed. The error is cut to its first 400 characters (the
-- caller bounds it to bytes).
--   $1: a flow slug, or '' for all; $2: a status, 'scheduled' (started, start_at ahead), or ''
--   for all; $3: the limit;
--   $4: '' for the newest page, or the id of the run the page comes after (the cursor);
--   $5, $6: created at or after $5 and before $6, in microseconds since the epoch (NULL: unbounded);
--   $7: '' for all, or text the input must hold (any case).
-- The flows are read one at a time through runs_by_flow (hash of the slug, created_at DESC), as
-- list_runs.sql reads them; the time bounds and the cursor are ranges of that index.
--
-- The cursor is the run's (created_at, id). A run pruned since the page that named it is no longer
-- there to read: its created_at is then bounded by its id, a time-ordered UUID (version 7) whose
-- first 48 bits are the millisecond since the epoch in which it was made, in the transaction that
-- created the run, so at or after the run's created_at. The page is then the runs created before
-- the end of that millisecond: every run after the pruned one is there, none skipped; a run
-- created in that same millisecond that the previous page showed may be shown again. An id of
-- another version names no time: no runs.
--
-- The text search reads inputs, so it is bounded: among the newest 10,000 runs of each flow that
-- pass the other filters, and only inputs that take at most 16 KiB as stored (pg_column_size, read
-- from the header); larger inputs are not searched. strpos over lower(): the text is no pattern.
WITH listed(slug) AS (SELECT $1::text WHERE $1 <> ''
  UNION ALL SELECT s FROM flowreg._run_slugs() AS s WHERE $1 = ''),
k AS (SELECT coalesce((SELECT created_at FROM flowreg.runs WHERE id = nullif($4::text, '')::uuid),
   CASE WHEN $4 = '' THEN timestamptz 'infinity'
        WHEN substr($4, 15, 1) = '7' THEN timestamptz 'epoch' + interval '1 ms' *
     (('x' || substr(replace($4, '-', ''), 1, 12))::bit(48)::bigint + 1) END) AS c,
   nullif($4, '')::uuid AS i,
   coalesce(timestamptz 'epoch' + $5::bigint * interval '1 microsecond', '-infinity') AS since,
   coalesce(timestamptz 'epoch' + $6::bigint * interval '1 microsecond', 'infinity') AS until)
SELECT id::text AS id, flow_slug, flow_version, status, left(error, 400) AS error,
 pg_column_size(input) AS input_stored_bytes, pg_column_size(output) AS output_stored_bytes,
 (extract(epoch FROM created_at) * 1000000)::bigint AS created_at_us,
 (extract(epoch FROM finished_at) * 1000000)::bigint AS finished_at_us,
 retry_of::text AS retry_of, idempotency_key,
 (extract(epoch FROM start_at) * 1000000)::bigint AS start_at_us,
 (status = 'started' AND start_at > now()) IS TRUE AS scheduled
 FROM k, listed l CROSS JOIN LATERAL (SELECT c.* FROM (SELECT r.id, r.flow_slug, r.flow_version,
    r.status, r.error, r.input, r.output, r.created_at, r.finished_at, r.retry_of,
    r.idempotency_key, r.start_at
   FROM flowreg.runs r
   WHERE hashtextextended(r.flow_slug, 0) = hashtextextended(l.slug, 0)
    AND r.flow_slug = l.slug AND ($2 = '' OR r.status = $2
      OR ($2 = 'scheduled' AND r.status = 'started' AND r.start_at > now()))
    AND r.created_at >= k.since AND r.created_at < k.until
    AND r.created_at <= k.c AND (r.created_at < k.c OR r.id > k.i)
   ORDER BY r.created_at DESC, r.id
   LIMIT CASE WHEN $7 = '' THEN $3::int ELSE 10000 END) c
  WHERE $7 = '' OR (pg_column_size(c.input) <= 16384
                    AND strpos(lower(c.input::text), lower($7)) > 0)
  LIMIT $3::int) r
 ORDER BY created_at DESC, id LIMIT $3::int
