# Warnings live in an INTERFACE target that our own targets link PRIVATE, so they never leak to
# consumers of the installed package.
add_library(flowreg_warnings INTERFACE)
target_compile_options(flowreg_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
  -Woverloaded-virtual -Wconversion -Wsign-conversion -Wimplicit-fallthrough
  $<$<CXX_COMPILER_ID:GNU>:-Wduplicated-cond -Wlogical-op>
  # GCC warns when a type of an included file uses an anonymous namespace; a unity batch includes
  # every .cpp it compiles, so this fires on a .cpp's own private types (CMAKE_UNITY_BUILD).
  $<$<CXX_COMPILER_ID:GNU>:-Wno-subobject-linkage>
  $<$<CXX_COMPILER_ID:Clang>:-Wthread-safety>
  $<$<BOOL:${FLOWREG_WERROR}>:-Werror>)
