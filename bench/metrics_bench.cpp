// metrics_bench: the cost of recording a metric on the worker's hot path, and of a scrape.
//
//   Histogram::observe      one observation (bucket search, two relaxed atomic adds)
//   Counter::inc            one relaxed atomic add
//   step_series lookup      what a worker does once per (flow, step) when a loop starts, not per
//                           task (the handler keeps the pointer)
//   task hooks              what Engine::run_task adds per task: two steady_clock reads and two
//                           observations
//   exposition              rendering the process's metrics with N (flow, step) series
// Threads: the same with 1, 2 and 4 threads recording into one series (contention on one cache
// line: the worst case of many handler threads running one step).

#include <benchmark/benchmark.h>

#include <chrono>
#include <string>

#include "metrics/metrics.hpp"

namespace m = flowreg::detail::metrics;

namespace {

void BM_HistogramObserve(benchmark::State& state) {
  static m::Histogram h(m::kTaskSecondsBuckets);
  double v = 0.0001;
  for (auto _ : state) {
    h.observe(v);
    v = v < 100 ? v * 1.7 : 0.0001;
  }
}
BENCHMARK(BM_HistogramObserve)->Threads(1)->Threads(2)->Threads(4);

void BM_CounterInc(benchmark::State& state) {
  static m::Counter c;
  for (auto _ : state) c.inc();
}
BENCHMARK(BM_CounterInc)->Threads(1)->Threads(2)->Threads(4);

void BM_StepSeriesLookup(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(m::step_series("bench_flow", "bench_step"));
}
BENCHMARK(BM_StepSeriesLookup);

void BM_TaskHooks(benchmark::State& state) {
  m::StepSeries* series = m::step_series("bench_flow", "hooks");
  for (auto _ : state) {
    const auto claimed = std::chrono::steady_clock::now();
    const auto entered = std::chrono::steady_clock::now();
    series->latency_seconds.observe(m::seconds(entered - claimed));
    series->task_seconds.observe(m::seconds(std::chrono::steady_clock::now() - entered));
  }
}
BENCHMARK(BM_TaskHooks)->Threads(1)->Threads(2)->Threads(4);

void BM_Exposition(benchmark::State& state) {
  for (int i = 0; i < state.range(0); ++i)
    m::step_series("flow_" + std::to_string(i / 10), "step_" + std::to_string(i % 10))
        ->task_seconds.observe(0.01);
  std::size_t bytes = 0;
  for (auto _ : state) bytes = m::exposition().size();
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_Exposition)->Arg(10)->Arg(100)->Arg(1000)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
