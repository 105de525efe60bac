-- Refuses to delete a flow version that runs still use (SQLSTATE 23503), as the foreign key from
-- runs to flows did before migration 0011 (which explains why it went): the statement trigger
-- flows_keep_used_versions, created here with its function, calls it after every DELETE from
-- flows, with the deleted rows; flows_keep_used_versions_truncate after every TRUNCATE of flows,
-- which it refuses while runs are stored (after the truncation of every table of the statement,
-- so `TRUNCATE flowreg.flows, flowreg.runs, ... CASCADE` empties both).
--
-- Runs are created without locking their flow's row; a start and a delete of its flow version
-- are kept apart by the table lock on runs instead. SHARE waits until every transaction that has
-- written runs has ended, then keeps runs unwritten until this transaction ends. So a start that
-- committed first has its runs seen here (and the delete fails), and a start that comes after
-- waits for this transaction and then no longer sees the version's steps (start_runs reads them
-- in the statement that inserts the runs, and inserts none: not stored, P0002). Deleting a flow
-- version is rare (flowreg itself never does); run writes wait for it until its transaction
-- ends, so it should not be left open. No index of runs has the version: the check reads every
-- run (measured at 100,000 runs: a sequential scan, 13 ms for the whole DELETE).
-- A start in a REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates the delete's
-- commit is not covered (flowreg's own starts are single statements in READ COMMITTED).
CREATE OR REPLACE FUNCTION flowreg._guard_flow_delete()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_slug text;
  v_version text;
  v_runs bigint;
BEGIN
  LOCK TABLE flowreg.runs IN SHARE MODE;
  IF TG_OP = 'TRUNCATE' THEN
    IF EXISTS (SELECT 1 FROM flowreg.runs) THEN
      RAISE EXCEPTION USING ERRCODE = '23503', TABLE = 'flows', SCHEMA = 'flowreg',
        MESSAGE = 'flowreg.flows cannot be truncated while runs are stored',
        HINT = 'Truncate flowreg.runs, flowreg.step_states and flowreg.tasks with it.';
    END IF;
    RETURN NULL;
  END IF;
  SELECT g.slug, g.version, u.n INTO v_slug, v_version, v_runs
  FROM gone g
  CROSS JOIN LATERAL (SELECT count(*) AS n FROM flowreg.runs r
                      WHERE r.flow_slug = g.slug AND r.flow_version = g.version) u
  WHERE u.n > 0
  ORDER BY g.slug, g.version
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '23503', TABLE = 'flows', SCHEMA = 'flowreg',
      MESSAGE = format('flow %L version %L cannot be deleted: %s run(s) of it are stored',
                       v_slug, v_version, v_runs),
      HINT = 'Delete or prune its runs first.';
  END IF;
  RETURN NULL;
END $$;

ALTER FUNCTION flowreg._guard_flow_delete() SET jit = off;

CREATE OR REPLACE TRIGGER flows_keep_used_versions
  AFTER DELETE ON flowreg.flows REFERENCING OLD TABLE AS gone
  FOR EACH STATEMENT EXECUTE FUNCTION flowreg._guard_flow_delete();

CREATE OR REPLACE TRIGGER flows_keep_used_versions_truncate
  AFTER TRUNCATE ON flowreg.flows
  FOR EACH STATEMENT EXECUTE FUNCTION flowreg._guard_flow_delete();
