// Forks in its constructor; the forked process sleeps for five minutes. Built twice: fork_child
// keeps it in the loading process's group; fork_daemon (FORK_CHILD_DAEMON) daemonizes it as a
// service does (fork, setsid, fork again, the middle process exits), so that it leaves the group,
// the session and its parent. When FLOWREG_TEST_FORK_DIR is set, a file named by the sleeping
// process's pid is created there before the constructor returns, so that a test can find it.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <flowreg/sdk.hpp>

namespace {

void note_pid(pid_t pid) {
  const char* dir = std::getenv("FLOWREG_TEST_FORK_DIR");
  if (!dir) return;
  char path[4096];
  std::snprintf(path, sizeof path, "%s/%d", dir, static_cast<int>(pid));
  const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) close(fd);
}

struct ForkAtLoad {
  ForkAtLoad() {
#ifdef FORK_CHILD_DAEMON
    const pid_t middle = fork();
    if (middle < 0) return;
    if (middle == 0) {
      setsid();
      const pid_t daemon = fork();
      if (daemon == 0) {
        sleep(300);
        _exit(0);
      }
      if (daemon > 0) note_pid(daemon);
      _exit(0);
    }
    waitpid(middle, nullptr, 0);  // the daemon's pid is noted once the middle process ended
#else
    const pid_t child = fork();
    if (child == 0) {
      sleep(300);
      _exit(0);
    }
    if (child > 0) note_pid(child);
#endif
  }
} fork_at_load;

}  // namespace

FLOWREG_PLUGIN(fork_child) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("fork_child_flow").step("only", "noop");
}
