-- flowreg migration 0004: fewer row versions and index entries per completed task.
--
-- * runs_finished indexed finished_at, so completing a run could never be a HOT update: it added
--   an entry to every index of runs. Old runs are found through runs_by_created instead (a run
--   finished before a time was created before it).
-- * runs, step_states and tasks are updated a few times in their life; with full pages
--   (fillfactor 100) an update cannot stay on its page, so even an update that changes no indexed
--   column was not HOT, and each update of a task (claim, completion) moved it to another page.
--   They keep room on each page (for pages filled from then on): half of each page of runs and
--   tasks, 40% of each page of step_states.
DROP INDEX flowreg.runs_finished;
ALTER TABLE flowreg.runs SET (fillfactor = 50);
ALTER TABLE flowreg.step_states SET (fillfactor = 60);
ALTER TABLE flowreg.tasks SET (fillfactor = 50);
