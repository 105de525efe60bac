# FLOWREG_SANITIZE=address,undefined or FLOWREG_SANITIZE=thread applies to every target of the build.
if(FLOWREG_SANITIZE)
  if(FLOWREG_SANITIZE MATCHES "thread" AND FLOWREG_SANITIZE MATCHES "address")
    message(FATAL_ERROR "ThreadSanitizer cannot be combined with AddressSanitizer")
  endif()
  add_compile_options(-fsanitize=${FLOWREG_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${FLOWREG_SANITIZE})
endif()
