-- A start with a priority (migration 0022): the runs $1 (a text array of ids), just started in
-- this transaction by start_run or start_runs, and their queued tasks get the priority $2
-- (flowreg.prioritize_runs). A start without a priority sends nothing more.
SELECT flowreg.prioritize_runs($1::uuid[], $2::int) AS runs
