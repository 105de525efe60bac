// Module "wchaos" for the worker tests of handlers that misbehave at run time
// (tests/pg/worker_chaos_test.cpp):
//   wchaos_crash  handler "crash": input.how = "segv" dereferences a null pointer (a real fault),
//                 "abort" calls abort(); 3 attempts
//   wchaos_hang   handler "hang": never returns; timeout 1s, 1 attempt
//   wchaos_slow   handler "hang" with the default timeout and 5 attempts (for killing its worker)
//   wchaos_big    handler "big": returns {"data": a string of input.bytes 'x'}
//   wchaos_quick  handler "quick": returns {"pid": the worker's pid, "n": input.n}
// Every handler first creates the file named by input.started, when given.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <flowreg/sdk.hpp>
#include <fstream>
#include <string>
#include <thread>

using flowreg::sdk::Context;
using flowreg::sdk::json;

namespace {

// Null, but the compiler cannot prove it: the store is a real fault at run time.
int* volatile null_target = nullptr;

void mark_started(const json& in) {
  if (in.is_object() && in.contains("started"))
    std::ofstream(in["started"].get<std::string>()) << ::getpid() << "\n";
}

json crash(const json& in, const Context&) {
  mark_started(in);
  if (in.value("how", std::string()) == "abort") std::abort();
  *null_target = 1;
  return json::object();
}

json hang(const json& in, const Context&) {
  mark_started(in);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

json big(const json& in, const Context&) {
  mark_started(in);
  return json{{"data", std::string(in["bytes"].get<std::size_t>(), 'x')}};
}

json quick(const json& in, const Context&) {
  mark_started(in);
  return json{{"pid", static_cast<int>(::getpid())}, {"n", in.value("n", 0)}};
}

}  // namespace

FLOWREG_PLUGIN(wchaos) {
  plugin.handler("crash", crash);
  plugin.handler("hang", hang);
  plugin.handler("big", big);
  plugin.handler("quick", quick);
  plugin.flow("wchaos_crash")
      .description("a handler that crashes its worker")
      .max_attempts(3)
      .step("only", "crash");
  plugin.flow("wchaos_hang")
      .description("a handler that never returns")
      .max_attempts(1)
      .timeout("1s")
      .step("only", "hang");
  plugin.flow("wchaos_slow")
      .description("a handler that runs until killed")
      .max_attempts(5)
      .step("only", "hang");
  plugin.flow("wchaos_big").description("a large output").max_attempts(1).step("only", "big");
  plugin.flow("wchaos_quick").description("returns at once").step("only", "quick");
}
