// Module "wchaos" for the worker tests of handlers that misbehave at run time
// (tests/pg/worker_chaos_test.cpp):
//   wchaos_crash  handler "crash": input.how = "segv" dereferences a null pointer (a real fault),
//                 "abort" calls abort(); 3 attempts
//   wchaos_hang   handler "hang": never returns; timeout 1s, 1 attempt
//   wchaos_slow   handler "hang" with the default timeout and 5 attempts (for killing its worker)
//   wchaos_big    handler "big": returns {"data": a string of input.bytes 'x'}
//   wchaos_quick  handler "quick": returns {"pid": the worker's pid, "n": input.n}
//   wchaos_gated  handler "audited" on a step with a concurrency limit of 2 per /customer
//   wchaos_gated_runs  a chain of two "audited" steps, its flow limited to 1 run per /customer
//   wchaos_rated  handler "audited", its flow limited to 10 task starts per second per /customer
//   wchaos_hourly  handler "audited" on a step limited to 1 task start per hour
//   wchaos_nap    "quick" -> a sleep step of 2s -> "quick" (tests/pg/waits_test.cpp)
//   wchaos_until  a root sleep step until the time at /at of the run's input -> "quick"
//   wchaos_snooze handler "snoozy", 1 attempt: appends a line to the file input.calls, and
//                 snoozes input.ms milliseconds while the file has at most input.snoozes lines;
//                 then returns {"calls": its lines, "attempt": the context's attempt}
//   wchaos_approval "quick" -> a wait for signal "approve" -> "resumed"
//   wchaos_approval_slow "audited" (input.ms long) -> a wait for signal "approve" -> "resumed"
//   wchaos_paid   a wait for event "paid" matching /order of the run's input -> "resumed"
//   wchaos_deadline a wait for signal "go", 1 s timeout, default {"late": true} -> "quick"
//   wchaos_expire a wait for signal "go", failing after 1 s
//   wchaos_branch conditional steps (docs/flows.md#conditional-steps), each "routed":
//     route; card (when /route/pay equals "card"); cash (when /route/pay in ["cash", "voucher"]);
//     receipt <- card; notify <- card, cash (trigger any); vip, a root step (when /vip exists and
//     is not false); close <- receipt, vip
//   wchaos_kid    handler "kid" (child flows, docs/flows.md#child-flows; 3 attempts): appends an
//                 "E" audit line and returns {"kid": input.customer, "n": input.n}; fails for
//                 good when input.fail is true
//   wchaos_family "fanout" (returns input.items) -> kids, a flow step with map over wchaos_kid;
//                 solo, a root flow step of wchaos_kid on the run's input; gather <- kids, solo
//                 ("gathered": {"kids": the kids' outputs, "solo": solo's})
//   wchaos_guardian a root flow step of wchaos_approval (for the cancel cascade)
// "routed" passes the run's input on (a root step's input, else the first dependency's output
// that has "audit"), appending an "E" audit line for it before it returns.
// "resumed" (after a wait step: its input {wait step: the signal's or event's data}) appends an
// "E" audit line for the data, when it has input.audit, and returns it.
// "audited" appends "S|E <customer> <run> <step> <attempt> <pid> <steady clock ns>" lines to the
// file input.audit (one write each, O_APPEND) when it starts and before it returns, and sleeps
// input.ms milliseconds between them: tests/pg/concurrency_keys_test.cpp.
// Every handler first creates the file named by input.started, when given.
#include <fcntl.h>
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

void audit(const json& in, const Context& c, char what) {
  const std::string line =
      std::string(1, what) + " " + in.value("customer", std::string("-")) + " " + c.run_id + " " +
      c.step + " " + std::to_string(c.attempt) + " " + std::to_string(::getpid()) + " " +
      std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) + "\n";
  const int fd =
      ::open(in["audit"].get<std::string>().c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) throw std::runtime_error("cannot open the audit file");
  const auto written = ::write(fd, line.data(), line.size());
  ::close(fd);
  if (written != static_cast<ssize_t>(line.size())) throw std::runtime_error("short audit write");
}

// Its input: the run's (a root step), or {"a": the output of step a} (step b of the chain); its
// output: that input again, for the next step.
json audited(const json& in, const Context& c) {
  const json& args = in.contains("a") ? in["a"] : in;
  audit(args, c, 'S');
  std::this_thread::sleep_for(std::chrono::milliseconds(args.value("ms", 0)));
  audit(args, c, 'E');
  return args;
}

json snoozy(const json& in, const Context& c) {
  const std::string file = in["calls"].get<std::string>();
  std::ofstream(file, std::ios::app) << c.run_id << "\n";
  std::ifstream lines(file);
  int calls = 0;
  for (std::string line; std::getline(lines, line);) ++calls;
  if (calls <= in.value("snoozes", 0))
    flowreg::sdk::snooze(std::chrono::milliseconds(in.value("ms", 100)));
  return json{{"calls", calls}, {"attempt", c.attempt}};
}
json resumed(const json& in, const Context& c) {
  for (const auto& [step, data] : in.items())
    if (data.is_object() && data.contains("audit")) {
      audit(data, c, 'E');
      return data;
    }
  return in;
}

json routed(const json& in, const Context& c) {
  const json* args = &in;
  if (!in.contains("audit"))
    for (const auto& [step, data] : in.items())
      if (data.is_object() && data.contains("audit")) {
        args = &data;
        break;
      }
  audit(*args, c, 'E');
  return *args;
}

json kid(const json& in, const Context& c) {
  if (in.value("fail", false)) throw flowreg::sdk::permanent_error("told to fail");
  audit(in, c, 'E');
  return json{{"kid", in.value("customer", std::string("-"))}, {"n", in.value("n", 0)}};
}

json fanout(const json& in, const Context&) { return in.value("items", json::array()); }

json gathered(const json& in, const Context&) {
  return json{{"kids", in.value("kids", json())}, {"solo", in.value("solo", json())}};
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
  plugin.handler("audited", audited);
  plugin.handler("resumed", resumed);
  plugin.handler("routed", routed);
  plugin.handler("snoozy", snoozy);
  plugin.handler("kid", kid);
  plugin.handler("fanout", fanout);
  plugin.handler("gathered", gathered);
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
  plugin.flow("wchaos_gated")
      .description("at most 2 tasks at once per customer")
      .max_attempts(10)
      .base_delay("10ms")
      .step("only", "audited")
      .concurrency(2, "/customer");
  auto& gated_runs = plugin.flow("wchaos_gated_runs");
  gated_runs.description("at most 1 run at once per customer")
      .max_attempts(10)
      .base_delay("10ms")
      .concurrency(1, "/customer");
  gated_runs.step("a", "audited");
  gated_runs.step("b", "audited").depends_on({"a"});
  plugin.flow("wchaos_rated")
      .description("at most 10 task starts per second per customer")
      .max_attempts(10)
      .base_delay("10ms")
      .rate_limit(10, "1s", "/customer")
      .step("only", "audited");
  plugin.flow("wchaos_hourly")
      .description("one task start per hour")
      .step("only", "audited")
      .rate_limit(1, "1h");
  auto& nap = plugin.flow("wchaos_nap").description("a 2 s sleep between two steps");
  nap.step("first", "quick");
  nap.sleep_step("nap", "2s").depends_on({"first"});
  nap.step("after", "quick").depends_on({"nap"});
  auto& until = plugin.flow("wchaos_until").description("sleeps until input.at");
  until.sleep_until_step("wait", "/at");
  until.step("after", "quick").depends_on({"wait"});
  plugin.flow("wchaos_snooze")
      .description("snoozes input.snoozes times")
      .max_attempts(1)
      .step("only", "snoozy");
  auto& approval = plugin.flow("wchaos_approval").description("waits for signal approve");
  approval.step("first", "quick");
  approval.wait_signal_step("approve", "approve").depends_on({"first"});
  approval.step("done", "resumed").depends_on({"approve"});
  auto& slow = plugin.flow("wchaos_approval_slow")
                   .description("audited for input.ms, then waits for signal approve");
  slow.step("first", "audited");
  slow.wait_signal_step("approve", "approve").depends_on({"first"});
  slow.step("done", "resumed").depends_on({"approve"});
  auto& paid = plugin.flow("wchaos_paid").description("waits for event paid with its /order");
  paid.wait_event_step("paid", "paid").match("/order", "/order");
  paid.step("ship", "resumed").depends_on({"paid"});
  auto& deadline = plugin.flow("wchaos_deadline").description("signal go or a default after 1s");
  deadline.wait_signal_step("go", "go").wait_timeout("1s", json{{"late", true}});
  deadline.step("after", "quick").depends_on({"go"});
  auto& branch = plugin.flow("wchaos_branch").description("conditional steps on two branches");
  branch.max_attempts(10).base_delay("10ms");
  branch.step("route", "routed");
  branch.step("card", "routed")
      .depends_on({"route"})
      .when({{"at", "/route/pay"}, {"equals", "card"}});
  branch.step("cash", "routed")
      .depends_on({"route"})
      .when({{"at", "/route/pay"}, {"in", {"cash", "voucher"}}});
  branch.step("receipt", "routed").depends_on({"card"});
  branch.step("notify", "routed").depends_on({"card", "cash"}).trigger_any();
  branch.step("vip", "routed")
      .when(
          {{"all",
            {{{"at", "/vip"}, {"exists", true}}, {{"not", {{"at", "/vip"}, {"equals", false}}}}}}});
  branch.step("close", "routed").depends_on({"receipt", "vip"});
  plugin.flow("wchaos_expire")
      .description("signal go or fail after 1s")
      .wait_signal_step("go", "go")
      .wait_timeout("1s");
  plugin.flow("wchaos_kid")
      .description("a child flow")
      .max_attempts(3)
      .base_delay("10ms")
      .step("work", "kid");
  auto& family = plugin.flow("wchaos_family").description("child runs: one, and one per item");
  family.max_attempts(10).base_delay("10ms");
  family.step("split", "fanout");
  family.flow_map_step("kids", "wchaos_kid").depends_on({"split"});
  family.flow_step("solo", "wchaos_kid");
  family.step("gather", "gathered").depends_on({"kids", "solo"});
  plugin.flow("wchaos_guardian")
      .description("a child run waiting for a signal")
      .flow_step("child", "wchaos_approval");
}
