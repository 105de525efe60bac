# Owned by the directory-watcher work: its test executable.
