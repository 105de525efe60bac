-- The DAG of run $1's flow version, as it was stored when the run started (the registry may hold
-- another version now): the run's flow slug, and each step's slug, kind, handler, dependencies
-- (a JSON array) and child flow (a flow step's, migration 0028), in the flow's step order; one
-- row of NULL step when the version has no stored steps, none when there is no such run. The run
-- by its primary key (never its input or output), then its version's steps by flow_steps' primary
-- key (flow_slug, version, step_slug): as many rows as the flow has steps, whatever the history.
SELECT r.flow_slug, fs.step_slug, fs.kind, fs.handler, array_to_json(fs.deps)::text AS deps,
 fs.child_flow
 FROM flowreg.runs r
 LEFT JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version
 WHERE r.id = $1::uuid
 ORDER BY fs.step_index
