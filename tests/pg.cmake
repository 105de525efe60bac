# Owned by the store work: tests/pg executables.
