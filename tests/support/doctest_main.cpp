#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  // spdlog creates its registry on first use, inside libspdlog, which is not built with the
  // sanitizers. When two threads of a test log first at once, ThreadSanitizer cannot see that the
  // registry was made before the second reads it (the guard of the library's static is checked
  // in uninstrumented code) and reports a race. Made here, before any thread, it cannot.
  spdlog::default_logger_raw();
  return doctest::Context(argc, argv).run();
}
