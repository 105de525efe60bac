# flowreg_add_plugin(<name> SOURCES <src>... [LIBRARIES <lib>...] [OUTPUT_DIRECTORY <dir>])
#
# Builds a flowreg plugin: a MODULE library <name>.so with the flags the host relies on:
# hidden visibility (only the flowreg_plugin alias is exported), -fno-gnu-unique (so that glibc can
# really unload it), BOOST_DLL_USE_STD_FS (keeps Boost.System's unique symbols out), and
# --no-undefined (a missing symbol fails the build, not the load).
function(flowreg_add_plugin name)
  cmake_parse_arguments(ARG "" "OUTPUT_DIRECTORY" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "flowreg_add_plugin(${name}): SOURCES is required")
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE flowreg::sdk ${ARG_LIBRARIES})
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_compile_features(${name} PRIVATE cxx_std_17)
  target_compile_options(${name} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-fno-gnu-unique>)
  # Under clang's sanitizers the plugin's calls into the sanitizer runtime are left for the host
  # executable to resolve (clang links that runtime into executables only), so --no-undefined would
  # refuse every sanitized plugin: those builds go without it.
  if(NOT (FLOWREG_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "Clang"))
    target_link_options(${name} PRIVATE -Wl,--no-undefined)
  endif()
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY})
  endif()
endfunction()
