-- flowreg migration 0027: conditional steps (docs/flows.md#conditional-steps).
--
-- * A step may have a condition (`when`) over its input: false, the step is skipped, its state
--   'skipped', without output, task or attempt. A step that depends on a skipped step is skipped
--   too, unless its trigger is `any`: it then starts once each dependency completed or was
--   skipped, when at least one completed (none did: skipped). A skipped step counts as ended for
--   its dependents and its run (remaining_deps, remaining_leaves); its dependents' input has no
--   key for it, and a run's output no key for a skipped leaf.
-- * flow_steps.when_cond: the condition as written ({"at", "equals" | "in" | "exists"}, {"all"},
--   {"any"}, {"not"}), NULL for none; trigger_any; checked: the step may be skipped (it has a
--   condition, or a dependency that may be skipped), so that whether it starts is decided by
--   _start_steps, which reads its dependencies' states, never by the fast paths (a single step
--   started by the UPDATE that counts its dependencies in _account_steps, the root tasks of
--   start_run and start_runs, the layouts of one-step flows and chains). flow_deps.checked: the
--   same, of the edge's dependent step (_account_steps reads the edges, not the steps).
-- (IF NOT EXISTS: a database may run this file again after its record was lost, like 0007.)
ALTER TABLE flowreg.step_states DROP CONSTRAINT IF EXISTS step_states_status_check;
-- NOT VALID, then validated: every row meets it (it only allows one status more), and the check
-- does not hold the table's exclusive lock while it reads every row.
ALTER TABLE flowreg.step_states ADD CONSTRAINT step_states_status_check
  CHECK (status IN ('created', 'started', 'completed', 'failed', 'cancelled', 'skipped'))
  NOT VALID;
ALTER TABLE flowreg.step_states VALIDATE CONSTRAINT step_states_status_check;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS when_cond jsonb;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS trigger_any boolean NOT NULL DEFAULT false;
ALTER TABLE flowreg.flow_steps ADD COLUMN IF NOT EXISTS checked boolean NOT NULL DEFAULT false;
ALTER TABLE flowreg.flow_deps ADD COLUMN IF NOT EXISTS checked boolean NOT NULL DEFAULT false;
