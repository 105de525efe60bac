-- flowreg migration 0014: a task reads its step's attempts and retry delays from flow_steps; it
-- no longer copies them.
--
-- A task copied its step's options (max_attempts, base_delay_ms, max_delay_ms, timeout_ms) and had
-- a created_at no reader used. Its row is written twice (inserted, then a new version when it is
-- claimed). The attempts and delays are read only where a task fails (a failure, an expired lease,
-- a release): the functions now read them there from the task's step (flow_steps, by primary key,
-- which the claim already probes for a single step's input), and a task no longer stores them nor
-- created_at, 28 bytes fewer at each write. A change of a stored version's attempts or delays
-- (upsert_flow) therefore applies to its queued and running tasks too.
-- The timeout stays a copy, taken when the task is created: every claim and lease renewal reads
-- it, and reading it from flow_steps there cost 3 to 4 us more per claimed task, 13 to 24% of
-- work()'s server time (bench/work_cost.sh, alternated with the build before).
--
-- The columns stay, nullable and without a default, and tasks created from now on leave them NULL
-- (a NULL costs a bit of the row's null bitmap): the functions of the previous release, which read
-- them, are replaced only after this migration, in the function files' transaction, so a worker
-- calling them in between keeps working. A later migration may drop them. Nothing moves: a task
-- created before keeps its copy, which nothing reads any more.
ALTER TABLE flowreg.tasks ALTER COLUMN max_attempts DROP NOT NULL,
                          ALTER COLUMN base_delay_ms DROP NOT NULL,
                          ALTER COLUMN max_delay_ms DROP NOT NULL,
                          ALTER COLUMN created_at DROP NOT NULL,
                          ALTER COLUMN created_at DROP DEFAULT;
COMMENT ON COLUMN flowreg.tasks.max_attempts IS 'unused since migration 0014: see flow_steps';
COMMENT ON COLUMN flowreg.tasks.base_delay_ms IS 'unused since migration 0014: see flow_steps';
COMMENT ON COLUMN flowreg.tasks.max_delay_ms IS 'unused since migration 0014: see flow_steps';
COMMENT ON COLUMN flowreg.tasks.created_at IS 'unused since migration 0014';
