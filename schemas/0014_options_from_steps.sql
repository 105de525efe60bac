-- flowreg migration 0014: a task reads its step's options from flow_steps; it no longer copies them.
--
-- A task copied its step's options (max_attempts, base_delay_ms, max_delay_ms, timeout_ms) and had
-- a created_at no reader used. Its row is written twice (inserted, then a new version when it is
-- claimed), each with those 36 bytes. The functions now read the options from the task's step
-- (flow_steps, by its primary key, which the claim already probes for a single step's input) when
-- they apply: the claim and a lease renewal (timeout), a failure and an expired lease (attempts,
-- delays). A change of a stored version's options (upsert_flow) therefore applies from then on to
-- its queued and running tasks too, not only to tasks created later.
--
-- The columns stay, nullable and without a default, and tasks created from now on leave them NULL
-- (a NULL costs a bit of the row's null bitmap): the functions of the previous release, which read
-- them, are replaced only after this migration, in the function files' transaction, so a worker
-- calling them in between keeps working. A later migration may drop them. Nothing moves: a task
-- created before keeps its copy, which nothing reads any more.
ALTER TABLE flowreg.tasks ALTER COLUMN max_attempts DROP NOT NULL,
                          ALTER COLUMN base_delay_ms DROP NOT NULL,
                          ALTER COLUMN max_delay_ms DROP NOT NULL,
                          ALTER COLUMN timeout_ms DROP NOT NULL,
                          ALTER COLUMN created_at DROP NOT NULL,
                          ALTER COLUMN created_at DROP DEFAULT;
COMMENT ON COLUMN flowreg.tasks.max_attempts IS 'unused since migration 0014: see flow_steps';
COMMENT ON COLUMN flowreg.tasks.base_delay_ms IS 'unused since migration 0014: see flow_steps';
COMMENT ON COLUMN flowreg.tasks.max_delay_ms IS 'unused since migration 0014: see flow_steps';
COMMENT ON COLUMN flowreg.tasks.timeout_ms IS 'unused since migration 0014: see flow_steps';
COMMENT ON COLUMN flowreg.tasks.created_at IS 'unused since migration 0014';
