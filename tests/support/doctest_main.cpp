#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <signal.h>
#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  // spdlog creates its registry on first use, inside libspdlog, which is not built with the
  // sanitizers. When two threads of a test log first at once, ThreadSanitizer cannot see that the
  // registry was made before the second reads it (the guard of the library's static is checked
  // in uninstrumented code) and reports a race. Made here, before any thread, it cannot.
  spdlog::default_logger_raw();
  // Debian's cpp-httplib, the tests' HTTP client, sends without MSG_NOSIGNAL: a body still being
  // sent to a server that has answered (413) and closed would kill the test process. The failed
  // write is an error the test sees instead.
  signal(SIGPIPE, SIG_IGN);
  return doctest::Context(argc, argv).run();
}
