-- flowreg migration 0010: room on each page of runs and step_states for every row to be updated
-- in one transaction.
--
-- A batch completes the runs and step states of consecutive rows, which sit together on the same
-- pages, in one transaction: the old versions stay on the page until that transaction has ended,
-- so an update stays on its page (HOT) only while the page has room for a second copy of the row,
-- and a result makes the row bigger (output, finished_at, worker_id). With 0004's fillfactors
-- (runs 50, step_states 60) a 20,000-run burn-down at batch 64 made 36% of the step-state updates
-- and 14% of the run updates non-HOT: each wrote an entry in every index of its table and a row
-- lock record before moving the row to another page. At 40 every one of them was HOT, the drain
-- wrote 12% less WAL per single-step run (1,008 -> 884 bytes; a 3-step chain 3,733 -> 3,546), and
-- the tables ended about the same size (the moved rows had taken new pages anyway): runs 649 ->
-- 667 pages and step_states 667 -> 667 at batch 64, 712 -> 667 and 743 -> 667 at batch 512.
-- For pages filled from now on; pages already full keep what they hold.
ALTER TABLE flowreg.runs SET (fillfactor = 40);
ALTER TABLE flowreg.step_states SET (fillfactor = 40);
