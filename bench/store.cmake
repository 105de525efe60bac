# Owned by the store work: store_bench drives the run store on its own embedded cluster.
add_executable(store_bench store_bench.cpp)
target_include_directories(store_bench PRIVATE ${PROJECT_SOURCE_DIR}/core/src)
target_link_libraries(store_bench PRIVATE flowreg::core flowreg_warnings fmt::fmt)
