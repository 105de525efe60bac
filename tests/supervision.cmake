# Owned by the supervision work: flowreg::Supervisor's tests. Real threads, so the suite carries
# the label "concurrency" (besides "unit") and CI also runs it under ThreadSanitizer.
add_executable(flowreg_supervisor_tests unit/supervisor_test.cpp)
target_link_libraries(flowreg_supervisor_tests PRIVATE flowreg_test_support flowreg_warnings)
flowreg_add_suites(flowreg_supervisor_tests supervisor)
set_tests_properties(flowreg_supervisor_tests/supervisor PROPERTIES LABELS "unit;concurrency")
