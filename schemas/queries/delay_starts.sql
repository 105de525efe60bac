-- A delayed start (migration 0020): the runs $1 (a text array of ids), just started in this
-- transaction by start_run or start_runs, are made to start at $2 (microseconds since the epoch):
-- their start_at is set, and so is the available_at of their queued tasks (a solo task named by
-- its run's task_id, through tasks_pkey; the others through tasks_by_run, `NOT t.solo`; the
-- status tests written `status || ''`, so that no plan walks tasks_queued instead), which
-- no claim passes before that time. Nobody else sees these rows before the commit, so the order
-- of the locks taken does not matter. One probe per run of each index, driven by the runs. The
-- start's notification wakes the workers once at the commit: their claim finds nothing ready
-- and reads the time of the next delayed task ('due', in work), which they sleep until.
WITH r AS (
 UPDATE flowreg.runs SET start_at = timestamptz 'epoch' + $2::bigint * interval '1 microsecond'
 WHERE id = ANY ($1::uuid[]) AND status = 'started'
 RETURNING id, task_id, start_at),
solo AS (
 UPDATE flowreg.tasks t SET available_at = r.start_at FROM r
 WHERE t.id = ANY (ARRAY[r.task_id]) AND t.run_id = r.id AND t.status || '' = 'queued'
 RETURNING t.id),
other AS (
 UPDATE flowreg.tasks t SET available_at = r.start_at FROM r
 WHERE t.run_id = ANY (ARRAY[r.id]) AND NOT t.solo AND t.status || '' = 'queued'
 RETURNING t.id)
SELECT (SELECT count(*) FROM r) AS runs,
 (SELECT count(*) FROM solo) + (SELECT count(*) FROM other) AS tasks
