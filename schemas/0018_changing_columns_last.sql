-- flowreg migration 0018: the columns of runs and tasks that the hot path changes are stored last,
-- and tasks leaves more room in each page.
--
-- PostgreSQL logs an update that stays in its page (a HOT update, or any update whose new version
-- fits beside the old one) as the new row's bytes between the first and the last that changed:
-- the unchanged prefix and suffix are left out. A run's completion changed runs.status (4th
-- column) and runs.worker_id (14th), so it logged everything between them again, the run's input
-- included: with an input of 497 bytes, 658 B of WAL per completion instead of 152 (an UPDATE of
-- 2,000 rows of each layout, measured with pg_current_wal_insert_lsn). A claim changed
-- tasks.status (7th) and tasks.started_at (21st), logging the task's input (a map step's element)
-- and its other columns between them. Now the columns they change are the last ones:
-- * runs: remaining_leaves, attempts, status, finished_at, error, worker_id, output. A completion
--   logs those only; a step's failure with attempts left (attempts, worker_id) and a DAG's leaf
--   (remaining_leaves) less still.
-- * tasks: attempt, status, worker_id, lease_expires_at, started_at: what a claim changes.
-- * tasks' fillfactor goes from 50 to 40. At 50, a page took 29 new single-step tasks, and the
--   claimed versions of about a quarter of them no longer fitted beside the others: such an update
--   moves to another page, and PostgreSQL then writes a row lock first and the whole new row (no
--   prefix left out). At 40, 1.07 lock records per claimed task instead of 1.26.
-- * The other columns are moved too, behind the table's first ones, in an order that leaves less
--   padding for alignment, so that a new run's row and its task's are not longer than before:
--   their inserts log 151 and 162 B instead of 152 and 165 (moving only the changing columns
--   made them 155 and 171).
-- Per single-step run (bench/work_cost.sh --flow single --batch 64 --runs 20000 --rounds 1
-- --workers 2 --wal, two runs each): 1,187-1,189 B of WAL (start 628 + drain 559-561) instead of
-- 1,233 (628 + 605); the completion's HOT update of runs 155 B instead of 164, the claim's update
-- of tasks 124 instead of 149-150, its lock records 1.04-1.06 per run instead of 1.25-1.26. And
-- the WAL of a completion no longer grows with the run's input: 138 B per run for an input of
-- 1,000 bytes as for an empty one, against 164 and 1,172 before (tests/pg/run_store_test.cpp).
--
-- How: each moved column is renamed, a column of its name and type is added (at the end), and one
-- ALTER TABLE rewrites the table, computing the new column from the old one and the old one as
-- NULL (USING may read any column of the row), so the values are not stored twice and the table
-- comes out compact, its indexes rebuilt; then the old columns are dropped, and the new ones get
-- their defaults, NOT NULL and comments. The indexes and constraints that went with the old
-- columns are created again as they were, with their names (their definitions are read before).
-- The view flowreg.steps reads these columns: it is dropped first and created again, the same as
-- migration 0017's. Nothing else changes: the functions name every column they read and write,
-- and so do RunStore's statements and COPYs.
--
-- The upgrade rewrites runs (the whole history) and tasks, under a lock that makes workers and
-- starts wait until it commits; the longer the history, the longer (plan the upgrade of a large
-- database for a quiet moment). Every live run goes on where it was
-- (the rows keep their values; tests/pg/live_upgrade_test.cpp). (The renames make the file safe to
-- run again after its record was lost, like 0007: it moves the columns again.)
DROP VIEW IF EXISTS flowreg.steps;
ALTER TABLE flowreg.tasks SET (fillfactor = 40);

-- Moves the columns `cols` of `tbl`, in this order, after its other columns (see above).
CREATE TEMP TABLE moving_0018 (tbl regclass, cols text[]) ON COMMIT DROP;
INSERT INTO moving_0018 VALUES
  ('flowreg.runs',
   ARRAY['created_at', 'task_id', 'retry_of', 'idempotency_key', 'input', 'chained',
         'remaining_leaves', 'attempts', 'status', 'finished_at', 'error', 'worker_id',
         'output']),
  ('flowreg.tasks',
   ARRAY['timeout_ms', 'available_at', 'created_at', 'crashes', 'task_index', 'solo', 'chained',
         'step_slug', 'flow_slug', 'flow_version', 'input', 'max_attempts', 'base_delay_ms',
         'max_delay_ms', 'output', 'error', 'error_at', 'finished_at', 'attempt', 'status',
         'worker_id', 'lease_expires_at', 'started_at']);

DO $$
DECLARE
  m record;
  c record;
  saved text[];
  rewrite text[];
  finish text[];
  stmt text;
BEGIN
  FOR m IN SELECT * FROM moving_0018 LOOP
    -- The indexes (but the primary key) and constraints (but NOT NULL) of the table, to build
    -- again those that go with the old columns.
    SELECT array_agg(d) INTO saved FROM (
      SELECT regexp_replace(pg_get_indexdef(x.indexrelid), '^CREATE (UNIQUE )?INDEX ',
                            'CREATE \1INDEX IF NOT EXISTS ') AS d
      FROM pg_index x
      WHERE x.indrelid = m.tbl AND NOT x.indisprimary
        AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = x.indexrelid)
      UNION ALL
      SELECT format('ALTER TABLE %s ADD CONSTRAINT %I %s', m.tbl, k.conname,
                    pg_get_constraintdef(k.oid))
      FROM pg_constraint k
      WHERE k.conrelid = m.tbl AND k.contype IN ('c', 'f', 'u')) s;
    rewrite := '{}';
    finish := '{}';
    FOR c IN
      SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
             pg_get_expr(d.adbin, d.adrelid) AS def, col_description(m.tbl, a.attnum) AS comment
      FROM unnest(m.cols) WITH ORDINALITY AS n(name, i)
      JOIN pg_attribute a ON a.attrelid = m.tbl AND a.attname = n.name AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = m.tbl AND d.adnum = a.attnum
      ORDER BY n.i
    LOOP
      EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO %I', m.tbl, c.attname,
                     c.attname || '_0017');
      EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL, ALTER COLUMN %I DROP DEFAULT,'
                     ' ADD COLUMN %I %s', m.tbl, c.attname || '_0017', c.attname || '_0017',
                     c.attname, c.type);
      rewrite := rewrite || format('ALTER COLUMN %I TYPE %s USING %I', c.attname, c.type,
                                   c.attname || '_0017')
                         || format('ALTER COLUMN %I TYPE %s USING NULL', c.attname || '_0017',
                                   c.type);
      finish := finish || format('DROP COLUMN %I', c.attname || '_0017');
      IF c.def IS NOT NULL THEN
        finish := finish || format('ALTER COLUMN %I SET DEFAULT %s', c.attname, c.def);
      END IF;
      IF c.attnotnull THEN
        finish := finish || format('ALTER COLUMN %I SET NOT NULL', c.attname);
      END IF;
      IF c.comment IS NOT NULL THEN
        saved := saved || format('COMMENT ON COLUMN %s.%I IS %L', m.tbl, c.attname, c.comment);
      END IF;
    END LOOP;
    -- One rewrite: the new columns from the old ones, the old ones NULL.
    EXECUTE format('ALTER TABLE %s %s', m.tbl, array_to_string(rewrite, ', '));
    EXECUTE format('ALTER TABLE %s %s', m.tbl, array_to_string(finish, ', '));
    FOREACH stmt IN ARRAY saved LOOP
      -- A constraint on columns that stayed is still there.
      CONTINUE WHEN stmt LIKE 'ALTER TABLE % ADD CONSTRAINT %' AND EXISTS (
        SELECT FROM pg_constraint k WHERE k.conrelid = m.tbl
          AND stmt LIKE format('ALTER TABLE %s ADD CONSTRAINT %I %%', m.tbl, k.conname));
      EXECUTE stmt;
    END LOOP;
  END LOOP;
END $$;

-- The view, as migration 0017 made it.
CREATE VIEW flowreg.steps AS
  SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.status, s.remaining_deps,
         s.remaining_tasks, s.task_count, s.output, s.error, s.started_at, s.finished_at,
         s.attempts, s.worker_id
  FROM flowreg.step_states s
  UNION ALL
  SELECT r.id, fs.step_slug, fs.step_index, fs.kind, r.status, 0,
         CASE WHEN r.status = 'completed' THEN 0 ELSE 1 END, 1, r.output -> fs.step_slug,
         CASE WHEN r.status = 'failed' THEN r.error END, r.created_at, r.finished_at,
         r.attempts, r.worker_id
  FROM flowreg.runs r
  JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
  WHERE r.attempts IS NOT NULL
  UNION ALL
  -- A chain's steps not ended (migration 0017): the one with a task is started; the others are
  -- created, or cancelled with their run.
  SELECT r.id, fs.step_slug, fs.step_index, fs.kind,
         CASE WHEN r.status <> 'started' THEN 'cancelled'
              WHEN t.id IS NOT NULL THEN 'started' ELSE 'created' END,
         CASE WHEN t.id IS NULL THEN cardinality(fs.deps) ELSE 0 END,
         CASE WHEN t.id IS NOT NULL THEN 1 ELSE 0 END, CASE WHEN t.id IS NOT NULL THEN 1 ELSE 0 END,
         NULL::jsonb, NULL::text, t.created_at,
         CASE WHEN r.status <> 'started' THEN r.finished_at END, 0, NULL::text
  FROM flowreg.runs r
  JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
  LEFT JOIN flowreg.tasks t ON t.run_id = r.id AND t.step_slug = fs.step_slug
                            AND t.task_index = 0 AND NOT t.solo
  WHERE r.chained
    AND NOT EXISTS (SELECT FROM flowreg.step_states s
                    WHERE s.run_id = r.id AND s.step_slug = fs.step_slug);
