// Forks in its constructor; the child sleeps for five minutes. When FLOWREG_TEST_FORK_DIR is set,
// the child first creates a file named by its pid there, so that a test can find it.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <flowreg/sdk.hpp>

namespace {
struct ForkAtLoad {
  ForkAtLoad() {
    if (fork() != 0) return;
    if (const char* dir = std::getenv("FLOWREG_TEST_FORK_DIR")) {
      char path[4096];
      std::snprintf(path, sizeof path, "%s/%d", dir, static_cast<int>(getpid()));
      const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) close(fd);
    }
    sleep(300);
    _exit(0);
  }
} fork_at_load;
}  // namespace

FLOWREG_PLUGIN(fork_child) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("fork_child_flow").step("only", "noop");
}
