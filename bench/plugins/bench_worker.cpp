// Plugin of worker_bench (module "bench_worker"): handlers that do no work, so that the bench
// measures the worker and the run store, not the handlers.
//
//   bench_single    one step "only" (noop)
//   bench_chain     three steps a -> b -> c (each noop): three tasks per run, run one after another
//   bench_latency   one step "only" (stamp): its output carries the wall-clock time
//   (CLOCK_REALTIME,
//                   microseconds) at which the handler was entered, which worker_bench subtracts
//                   from the time just before it started the run. Same machine, same clock.
#include <time.h>

#include <cstdint>
#include <flowreg/sdk.hpp>

using flowreg::sdk::json;

namespace {

// A constant output (not the input), so that the inputs of a chain's later steps stay small.
json noop(const json&) { return json{{"ok", true}}; }

json stamp(const json&) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  const std::int64_t us = static_cast<std::int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1'000;
  return json{{"t_us", us}};
}

}  // namespace

FLOWREG_PLUGIN(bench_worker) {
  plugin.handler("noop", noop);
  plugin.handler("stamp", stamp);
  plugin.flow("bench_single").description("worker_bench: one no-op step").step("only", "noop");
  auto& chain = plugin.flow("bench_chain").description("worker_bench: a -> b -> c, no-op steps");
  chain.step("a", "noop");
  chain.step("b", "noop").depends_on({"a"});
  chain.step("c", "noop").depends_on({"b"});
  plugin.flow("bench_latency")
      .description("worker_bench: returns the time its handler was entered")
      .step("only", "stamp");
}
