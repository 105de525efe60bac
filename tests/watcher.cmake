# Owned by the directory-watcher work: its test executable.
add_executable(flowreg_watcher_tests unit/directory_watcher_test.cpp)
target_include_directories(flowreg_watcher_tests PRIVATE ${PROJECT_SOURCE_DIR}/core/src)
target_link_libraries(flowreg_watcher_tests PRIVATE flowreg_test_support flowreg_warnings)
flowreg_add_suites(flowreg_watcher_tests directory_watcher)
set_tests_properties(flowreg_watcher_tests/directory_watcher PROPERTIES LABELS "unit;concurrency" TIMEOUT 600)
