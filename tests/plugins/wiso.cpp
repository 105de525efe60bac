// Module "wiso" for the tests of handler processes (isolation: process;
// tests/pg/worker_isolation_test.cpp). Every flow runs in processes, one attempt each:
//   wiso_bad    handler "misbehave": input.how says how
//                 segv       dereferences a null pointer          abort  calls abort()
//                 exit0      exit(0) in the middle of the task     spin   an endless loop (CPU)
//                 alloc      allocates and touches 2 GiB           sleep  sleeps input.ms, returns
//                 fork       forks a child that sleeps forever, returns
//                 fork_bomb  forks until fork fails or 300 children, each sleeping forever
//                 garbage    writes bytes that are no frame to the result channel (descriptor 3)
//                 close      closes the result channel, then returns
//                 print      prints input.lines lines to stdout and stderr, returns
//               limits: 512 MiB of memory, 1 s of CPU per task, 64 processes; timeout 8s
//   wiso_quick  handler "quick": returns {"pid": its process's pid, "n": input.n}
// Every handler first writes its pid to the file named by input.started, when given, and the
// pids of the children it forks to input.children (one line each).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <flowreg/sdk.hpp>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using flowreg::sdk::Context;
using flowreg::sdk::json;

namespace {

int* volatile null_target = nullptr;

void note_pid(const json& in, const char* key, pid_t pid) {
  if (in.is_object() && in.contains(key))
    std::ofstream(in[key].get<std::string>(), std::ios::app) << pid << "\n";
}

// A child that sleeps until killed; its parent writes its pid.
pid_t fork_sleeper(const json& in) {
  const pid_t pid = ::fork();
  if (pid == 0)
    for (;;) ::pause();
  if (pid > 0) note_pid(in, "children", pid);
  return pid;
}

json misbehave(const json& in, const Context&) {
  note_pid(in, "started", ::getpid());
  const std::string how = in.value("how", std::string());
  if (how == "segv") *null_target = 1;
  if (how == "abort") std::abort();
  if (how == "exit0") std::exit(0);
  if (how == "spin") {
    volatile unsigned long n = 0;
    for (;;) n = n + 1;
  }
  if (how == "alloc") {
    const std::size_t size = std::size_t{2} << 30;
    char* p = new char[size];
    std::memset(p, 1, size);
    const int last = p[size - 1];
    delete[] p;
    return json{{"touched", last}};
  }
  if (how == "sleep") {
    std::this_thread::sleep_for(std::chrono::milliseconds(in.value("ms", 0)));
    return json{{"slept", in.value("ms", 0)}};
  }
  if (how == "fork") return json{{"child", fork_sleeper(in)}};
  if (how == "fork_bomb") {
    int n = 0;
    while (n < 300 && fork_sleeper(in) > 0) ++n;
    return json{{"forked", n}};
  }
  if (how == "garbage") {
    const char junk[] = "this is not a frame, and it says it is very long";
    if (::write(3, junk, sizeof junk) < 0) return json{{"wrote", false}};
    return json{{"wrote", true}};
  }
  if (how == "close") {
    ::close(3);
    return json{{"closed", true}};
  }
  if (how == "print") {
    for (int i = 0; i < in.value("lines", 1); ++i) {
      std::printf("out line %d\n", i);
      std::fprintf(stderr, "err line %d\n", i);
    }
    return json{{"printed", in.value("lines", 1)}};
  }
  return json{{"how", how}};
}

json quick(const json& in, const Context&) {
  note_pid(in, "started", ::getpid());
  return json{{"pid", static_cast<int>(::getpid())}, {"n", in.value("n", 0)}};
}

}  // namespace

FLOWREG_PLUGIN(wiso) {
  plugin.handler("misbehave", misbehave);
  plugin.handler("quick", quick);
  plugin.flow("wiso_bad")
      .description("handlers that misbehave, each in a process of its own")
      .isolation("process")
      .limits({{"memory_mb", 512}, {"cpu", "1s"}, {"processes", 64}})
      .max_attempts(1)
      .timeout("8s")
      .step("only", "misbehave");
  plugin.flow("wiso_quick")
      .description("returns at once, in a handler process")
      .isolation("process")
      .max_attempts(1)
      .step("only", "quick");
}
