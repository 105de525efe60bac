# Owned by the worker bench: worker_bench starts `flowreg worker` processes against its own
# embedded cluster and times them (runs/s to burn down a backlog, start-to-handler latency).
# Its plugin is built into a directory of its own: the workers load every plugin of their
# directory, and must see this one only.
set(FLOWREG_WORKER_BENCH_PLUGIN_DIR ${CMAKE_CURRENT_BINARY_DIR}/worker_plugins)
flowreg_add_plugin(bench_worker SOURCES plugins/bench_worker.cpp
  OUTPUT_DIRECTORY ${FLOWREG_WORKER_BENCH_PLUGIN_DIR})

add_executable(worker_bench worker_bench.cpp)
target_include_directories(worker_bench PRIVATE ${PROJECT_SOURCE_DIR}/core/src)
target_link_libraries(worker_bench PRIVATE flowreg::core flowreg_warnings fmt::fmt)
target_compile_definitions(worker_bench PRIVATE
  FLOWREG_BINARY="$<TARGET_FILE:flowreg>"
  BENCH_WORKER_PLUGIN="$<TARGET_FILE:bench_worker>"
  BENCH_WORKER_PLUGIN_DIR="${FLOWREG_WORKER_BENCH_PLUGIN_DIR}")
add_dependencies(worker_bench flowreg bench_worker)
