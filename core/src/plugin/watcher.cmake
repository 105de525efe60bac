# Owned by the directory-watcher work: target_sources(flowreg_core PRIVATE ...).
