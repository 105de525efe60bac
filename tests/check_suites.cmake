cmake_minimum_required(VERSION 3.25)
# Fails when the doctest binary BINARY holds a test suite not in SUITES (comma-separated): each suite
# is its own ctest test (flowreg_add_suites), so one left out of the list would never run.
execute_process(COMMAND ${BINARY} --list-test-suites --force-colors=false
                OUTPUT_VARIABLE listing RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "${BINARY} --list-test-suites failed (${status})")
endif()
string(REPLACE "," ";" registered "${SUITES}")
string(REPLACE "\n" ";" lines "${listing}")
set(missing "")
foreach(line IN LISTS lines)
  string(STRIP "${line}" line)
  if(line STREQUAL "" OR line MATCHES "^\\[doctest\\]" OR line MATCHES "^=+$")
    continue()
  endif()
  if(NOT line IN_LIST registered)
    list(APPEND missing "${line}")
  endif()
endforeach()
if(missing)
  message(FATAL_ERROR "${BINARY}: test suites not registered in tests/CMakeLists.txt "
                      "(flowreg_add_suites), so they never run: ${missing}")
endif()
