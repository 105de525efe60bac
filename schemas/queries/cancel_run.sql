-- Cancels a run: true when it did, false when the run had already ended.
SELECT flowreg.cancel_run($1::uuid) AS cancelled
