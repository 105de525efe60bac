# Owned by the generic-registry work: Registry<Key,Value>, HandleRegistry (get_or_start), sync points.
# Header-only components; their tests force interleavings with sync points (flowreg/sync_point.hpp)
# and carry the label "concurrency" (besides "unit") so CI can also run them under ThreadSanitizer.
add_executable(flowreg_concurrency_tests
  unit/sync_point_test.cpp
  unit/registry_test.cpp
  unit/handle_registry_test.cpp
)
target_link_libraries(flowreg_concurrency_tests PRIVATE flowreg_test_support flowreg_warnings)
flowreg_add_suites(flowreg_concurrency_tests sync_point registry handle_registry)
set_tests_properties(
  flowreg_concurrency_tests/sync_point
  flowreg_concurrency_tests/registry
  flowreg_concurrency_tests/handle_registry
  PROPERTIES LABELS "unit;concurrency")
