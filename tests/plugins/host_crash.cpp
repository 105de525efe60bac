// Crashes while being loaded, but only in the host: the inspection child (`flowreg __inspect`)
// loads it fine. Stands for any crash the inspection cannot reproduce (a race, the host's state).
#include <csignal>
#include <cstdio>
#include <cstring>
#include <flowreg/sdk.hpp>
#include <string>

namespace {
bool in_inspection_child() {
  std::FILE* f = std::fopen("/proc/self/cmdline", "r");
  if (!f) return false;
  std::string cmdline;
  for (int c; (c = std::fgetc(f)) != EOF;) cmdline.push_back(c == 0 ? ' ' : static_cast<char>(c));
  std::fclose(f);
  return cmdline.find(" __inspect ") != std::string::npos;
}
struct CrashInHost {
  CrashInHost() {
    if (!in_inspection_child()) std::raise(SIGSEGV);
  }
} crash_in_host;
}  // namespace

FLOWREG_PLUGIN(host_crash) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("host_crash_flow").step("only", "noop");
}
