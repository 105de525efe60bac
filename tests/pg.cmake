# The tests/pg executables start real PostgreSQL clusters through flowreg's EmbeddedCluster (never a
# mock) and fail, never skip, when the server binaries are missing.
add_executable(flowreg_pg_tests
  pg/pg_fixture.cpp
  pg/embedded_cluster_test.cpp
  pg/migrations_test.cpp
  pg/run_store_test.cpp
  pg/cli_db_test.cpp
  pg/cli_runs_test.cpp
  pg/cli_hostile_test.cpp
  pg/worker_test.cpp
  pg/worker_faults_test.cpp
)
add_dependencies(flowreg_pg_tests flowreg text orders files fixture_wprobe_v1 fixture_wprobe_v2 fixture_wprobe_v3 fixture_wchaos fixture_wtext)
target_compile_definitions(flowreg_pg_tests PRIVATE
  FLOWREG_EXAMPLE_PLUGIN_DIR="${FLOWREG_EXAMPLE_PLUGIN_DIR}" FLOWREG_FIXTURE_DIR="${FLOWREG_FIXTURE_DIR}")
target_include_directories(flowreg_pg_tests PRIVATE ${PROJECT_SOURCE_DIR}/core/src)
target_link_libraries(flowreg_pg_tests PRIVATE flowreg_test_support flowreg_warnings PkgConfig::PQXX)
flowreg_add_suites(flowreg_pg_tests embedded_cluster migrations run_store cli_db cli_runs cli_hostile worker worker_faults)
set_tests_properties(flowreg_pg_tests/embedded_cluster flowreg_pg_tests/migrations
  flowreg_pg_tests/run_store flowreg_pg_tests/cli_db flowreg_pg_tests/cli_runs
  flowreg_pg_tests/cli_hostile flowreg_pg_tests/worker flowreg_pg_tests/worker_faults
  PROPERTIES LABELS "pg" TIMEOUT 600)
