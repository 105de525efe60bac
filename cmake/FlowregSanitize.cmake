# FLOWREG_SANITIZE=address,undefined or FLOWREG_SANITIZE=thread applies to every target of the build.
if(FLOWREG_SANITIZE)
  if(FLOWREG_SANITIZE MATCHES "thread" AND FLOWREG_SANITIZE MATCHES "address")
    message(FATAL_ERROR "ThreadSanitizer cannot be combined with AddressSanitizer")
  endif()
  add_compile_options(-fsanitize=${FLOWREG_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${FLOWREG_SANITIZE})
  # GCC 12 warns (-Wtsan, an error under -Werror) that ThreadSanitizer does not see
  # std::atomic_thread_fence, which Boost.Asio uses (flowreg serve's transport). The TSan suites
  # (label concurrency) do not run the server; its tests run it in a process of its own.
  if(FLOWREG_SANITIZE MATCHES "thread" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    add_compile_options(-Wno-tsan)
  endif()
endif()
