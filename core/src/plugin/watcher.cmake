# Owned by the directory-watcher work: target_sources(flowreg_core PRIVATE ...).
target_sources(flowreg_core PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src/plugin/directory_watcher.cpp)
