# Owned by the worker work: `flowreg worker` (engine, flow loops, supervision tree).
target_sources(flowreg_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/handler_pool.cpp
  ${CMAKE_CURRENT_LIST_DIR}/store_pool.cpp
  ${CMAKE_CURRENT_LIST_DIR}/task_journal.cpp
  ${CMAKE_CURRENT_LIST_DIR}/loop_state.cpp
  ${CMAKE_CURRENT_LIST_DIR}/engine.cpp
  ${CMAKE_CURRENT_LIST_DIR}/flow_loop.cpp
  ${CMAKE_CURRENT_LIST_DIR}/worker.cpp)
