-- The steps of run $1, in the flow's step order.
SELECT s.step_slug, s.kind, s.status, s.task_count,
-- A step's attempts: those of its tasks that left the queue or completed (kept in its state or
-- run, migrations 0009 and 0012) and those of its tasks still queued or started: found by run
-- (tasks_by_run), or, a one-step flow's solo task, by the id its run holds (migration 0013).
 s.attempts + coalesce((SELECT sum(t.attempt) FROM flowreg.tasks t
           WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug AND NOT t.solo
             AND t.status IN ('queued', 'started')), 0)::int
-- (Two nested lookups, not a join: planned as a join of runs and tasks, each call read about 370
-- entries of tasks' indexes in hot_path's 100,000-run backlog.)
 + coalesce((SELECT t.attempt FROM flowreg.tasks t
             WHERE t.id = (SELECT r.task_id FROM flowreg.runs r WHERE r.id = s.run_id)
               AND t.run_id = s.run_id AND t.status IN ('queued', 'started')), 0)
 AS attempts,
 (extract(epoch FROM s.started_at) * 1000000)::bigint AS started_at_us,
 (extract(epoch FROM s.finished_at) * 1000000)::bigint AS finished_at_us, s.error,
 s.output::text AS output, s.worker_id,
-- When a task of the step queued for later becomes available (a sleep step's end, a snooze's or a
-- retry's delay: migration 0025), and how many times its tasks were snoozed; its tasks found as
-- above.
 (extract(epoch FROM w.waits_until) * 1000000)::bigint AS waits_until_us,
 coalesce(w.snoozes, 0) AS snoozes,
-- What a wait step waits for (migration 0026): {"signal"}, or {"event", "match": the values it
-- waits for, once it waits}; NULL for other kinds. Its flow step by key, through its run.
 (SELECT CASE WHEN f.wait_signal IS NOT NULL THEN jsonb_build_object('signal', f.wait_signal)
              ELSE jsonb_build_object('event', f.wait_event, 'match',
                     (SELECT ew.match FROM flowreg.event_waits ew
                      WHERE ew.run_id = s.run_id AND ew.step_slug = s.step_slug)) END
  FROM flowreg.runs r
  JOIN flowreg.flow_steps f ON f.flow_slug = r.flow_slug AND f.version = r.flow_version
                           AND f.step_slug = s.step_slug
  WHERE r.id = s.run_id AND s.kind = 'wait')::text AS waits_for
-- The view holds both layouts: step_states rows, and the one step of a run that keeps its state
-- in its own row (migration 0012).
 FROM flowreg.steps s
 CROSS JOIN LATERAL (
   SELECT min(x.available_at) FILTER (WHERE x.status = 'queued' AND x.available_at > now())
            AS waits_until,
          sum(x.snoozes)::int AS snoozes
   FROM (SELECT t.status, t.available_at, t.snoozes FROM flowreg.tasks t
         WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug AND NOT t.solo
         UNION ALL
         SELECT t.status, t.available_at, t.snoozes FROM flowreg.tasks t
         WHERE t.id = (SELECT r.task_id FROM flowreg.runs r WHERE r.id = s.run_id)
           AND t.run_id = s.run_id AND t.step_slug = s.step_slug) x) w
 WHERE s.run_id = $1::uuid ORDER BY s.step_index
