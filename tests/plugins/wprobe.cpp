// Module "wprobe" for the worker tests (tests/pg/worker_test.cpp), in three builds: WPROBE_VERSION
// 1 and 2 have the same flows (replacing one by the other keeps the flow versions and changes the
// code); 3 adds a step to wprobe_chain (a new version of it).
//
// Handler "record" appends one line "<run> <step> <task_index> <attempt> <pid> <version>" (the
// worker's pid, also when the handler runs in a handler process of that worker) to the
// file named by input.log (one write(2) on an O_APPEND descriptor: lines never interleave), then
// behaves as the input says:
//   "hang_on_first": PATH  on attempt 1, creates PATH and hangs (until the process is killed)
//   "started": PATH        creates PATH once the handler runs
//   "gate": PATH           waits (up to 60 s) until PATH exists
//   "sleep_ms": N          sleeps N ms
// and returns {"version", "pid", "attempt", "n": input.n}.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <flowreg/sdk.hpp>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

using flowreg::sdk::Context;
using flowreg::sdk::json;

namespace {

// The worker's pid: this process's, or its parent's when this is a handler process (isolation:
// process; the worker suite runs in both modes, FLOWREG_TEST_ISOLATION).
int worker_pid() {
  std::ifstream in("/proc/self/cmdline");
  const std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return static_cast<int>(cmdline.find("__handler-host") != std::string::npos ? ::getppid()
                                                                              : ::getpid());
}

void append_line(const std::string& file, const std::string& line) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw flowreg::sdk::permanent_error("cannot open " + file);
  const ssize_t n = ::write(fd, line.data(), line.size());
  ::close(fd);
  if (n != static_cast<ssize_t>(line.size()))
    throw flowreg::sdk::permanent_error("short write to " + file);
}

json record(const json& input, const Context& context) {
  const json& in = input.contains("log") ? input : input.begin().value();  // a dependent step
  if (in.contains("log"))
    append_line(in["log"].get<std::string>(),
                context.run_id + " " + context.step + " " + std::to_string(context.task_index) +
                    " " + std::to_string(context.attempt) + " " + std::to_string(worker_pid()) +
                    " " + std::to_string(WPROBE_VERSION) + "\n");
  if (in.contains("hang_on_first") && context.attempt == 1) {
    std::ofstream(in["hang_on_first"].get<std::string>()) << worker_pid() << "\n";
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (in.contains("started")) std::ofstream(in["started"].get<std::string>()) << "running\n";
  if (in.contains("gate")) {
    const std::filesystem::path gate = in["gate"].get<std::string>();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!std::filesystem::exists(gate) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (in.contains("sleep_ms"))
    std::this_thread::sleep_for(std::chrono::milliseconds(in["sleep_ms"].get<int>()));
  json out = in;  // a dependent step passes the options on
  out["version"] = WPROBE_VERSION;
  out["pid"] = worker_pid();
  out["attempt"] = context.attempt;
  return out;
}

}  // namespace

FLOWREG_PLUGIN(wprobe) {
  plugin.handler("record", record);
  plugin.flow("wprobe_single").description("one step").step("only", "record");
  auto& chain = plugin.flow("wprobe_chain").description("three steps in a row");
  chain.step("a", "record");
  chain.step("b", "record").depends_on({"a"});
  chain.step("c", "record").depends_on({"b"});
#if WPROBE_VERSION >= 3
  chain.step("d", "record").depends_on({"c"});  // a new shape: a new version of wprobe_chain
#endif
}
