// Plugin of worker_bench (module "bench_worker"): handlers that do no work, so that the bench
// measures the worker and the run store, not the handlers.
//
//   bench_single    one step "only" (noop)
//   bench_chain     three steps a -> b -> c (each noop): three tasks per run, run one after another
//   bench_fanout    "split" (returns an array of 8 numbers), then the map step "each" (noop) over
//                   it: nine tasks per run, eight of them made ready by one completion
//   bench_latency   one step "only" (stamp): its output carries the wall-clock time
//   (CLOCK_REALTIME,
//                   microseconds) at which the handler was entered, which worker_bench subtracts
//                   from the time just before it started the run. Same machine, same clock.
//   bench_nap       a sleep step until the time at /at of the run's input, then "after" (noop)
//   bench_approval  a wait step for signal "go" (no task while it waits), then "after" (noop)
//   bench_parent    a flow step starting a run of bench_single (docs/flows.md#child-flows): two
//                   runs, two tasks (the child's, and its end handed back) per run
//   (and the limited flows below)
#include <time.h>

#include <cstdint>
#include <flowreg/sdk.hpp>

using flowreg::sdk::json;

namespace {

// A constant output (not the input), so that the inputs of a chain's later steps stay small.
json noop(const json&) { return json{{"ok", true}}; }

json split(const json&) { return json::array({1, 2, 3, 4, 5, 6, 7, 8}); }

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
  plugin.handler("split", split);
  plugin.flow("bench_single").description("worker_bench: one no-op step").step("only", "noop");
  auto& chain = plugin.flow("bench_chain").description("worker_bench: a -> b -> c, no-op steps");
  chain.step("a", "noop");
  chain.step("b", "noop").depends_on({"a"});
  chain.step("c", "noop").depends_on({"b"});
  // Conditional steps (docs/flows.md#conditional-steps): bench_chain's shape with a condition on
  // b, which holds (a's output exists: a, b and c run) or does not (b and c skipped).
  auto& cond = plugin.flow("bench_cond").description("worker_bench: a -> b (when true) -> c");
  cond.step("a", "noop");
  cond.step("b", "noop").depends_on({"a"}).when({{"at", "/a/ok"}, {"equals", true}});
  cond.step("c", "noop").depends_on({"b"});
  auto& skip = plugin.flow("bench_cond_skip").description("worker_bench: a -> b (skipped) -> c");
  skip.step("a", "noop");
  skip.step("b", "noop").depends_on({"a"}).when({{"at", "/a/ok"}, {"equals", false}});
  skip.step("c", "noop").depends_on({"b"});
  auto& fanout =
      plugin.flow("bench_fanout").description("worker_bench: split -> map of 8 no-op tasks");
  fanout.step("split", "split");
  fanout.map_step("each", "noop").depends_on({"split"});
  // Concurrency limits per key (docs/flows.md#concurrency-limits), on the step and on the flow.
  plugin.flow("bench_keyed")
      .description("worker_bench: one no-op step, at most 2 tasks at once per /k")
      .step("only", "noop")
      .concurrency(2, "/k");
  plugin.flow("bench_keyed_runs")
      .description("worker_bench: one no-op step, at most 2 runs at once per /k")
      .concurrency(2, "/k")
      .step("only", "noop");
  // Rate limits (docs/flows.md#rate-limits): one far above any drain rate, one of 1,000 per second.
  // A sleep until /at of the run's input, then a no-op step (docs/flows.md#sleep-steps).
  auto& nap = plugin.flow("bench_nap").description("worker_bench: sleep until /at, then no-op");
  nap.sleep_until_step("nap", "/at");
  nap.step("after", "noop").depends_on({"nap"});
  // A wait for a signal, then a no-op step (docs/flows.md#wait-steps).
  auto& approval =
      plugin.flow("bench_approval").description("worker_bench: wait for signal go, then no-op");
  approval.wait_signal_step("approve", "go");
  approval.step("after", "noop").depends_on({"approve"});
  // A child flow (docs/flows.md#child-flows).
  plugin.flow("bench_parent")
      .description("worker_bench: a flow step starting a run of bench_single")
      .flow_step("child", "bench_single");
  plugin.flow("bench_rated_high")
      .description("worker_bench: one no-op step, at most 1,000,000 task starts per second")
      .step("only", "noop")
      .rate_limit(1'000'000, "1s");
  plugin.flow("bench_rated_1000")
      .description("worker_bench: one no-op step, at most 1,000 task starts per second")
      .step("only", "noop")
      .rate_limit(1000, "1s");
  plugin.flow("bench_latency")
      .description("worker_bench: returns the time its handler was entered")
      .step("only", "stamp");
}
