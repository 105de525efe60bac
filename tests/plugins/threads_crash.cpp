// Crashes in its constructor when the process has more than one thread (a plugin that is fine in a
// single-threaded inspection child and kills a multi-threaded worker).
#include <csignal>
#include <cstdio>
#include <cstring>
#include <flowreg/sdk.hpp>

namespace {
int thread_count() {
  std::FILE* status = std::fopen("/proc/self/status", "r");
  if (!status) return 1;
  char line[256];
  int threads = 1;
  while (std::fgets(line, sizeof line, status))
    if (std::strncmp(line, "Threads:", 8) == 0) threads = std::atoi(line + 8);
  std::fclose(status);
  return threads;
}
struct CrashIfThreaded {
  CrashIfThreaded() {
    if (thread_count() > 1) std::raise(SIGSEGV);
  }
} crash_if_threaded;
}  // namespace

FLOWREG_PLUGIN(threads_crash) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("threads_crash_flow").step("only", "noop");
}
