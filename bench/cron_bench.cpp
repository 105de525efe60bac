// cron_bench: the cost of Cron::next_after, which the scheduler calls for each schedule it
// evaluates (10,000 schedules a minute must stay a small fraction of a core).
//
//   NextAfter/<expression>   the next instant after a moving start, in Europe/Berlin; the start
//                            advances by 7 minutes 13 seconds a call, across a whole year (both
//                            daylight-saving changes included)
//   Parse                    parsing one typical expression

#include <benchmark/benchmark.h>

#include <chrono>

#include "schedule/cron.hpp"

namespace {

namespace s = flowreg::schedule;

constexpr const char* kExpressions[] = {
    "*/5 * * * *",      // every five minutes
    "0 9 * * MON-FRI",  // weekdays at nine
    "30 2 * * *",       // daily in the hour skipped in spring
    "0 0 1 * *",        // monthly
    "0 0 29 2 *",       // leap days: years of days skipped
    "15 10 1,15 * 5",   // day-of-month or day-of-week
};

void BM_NextAfter(benchmark::State& state) {
  const char* text = kExpressions[state.range(0)];
  auto cron = s::Cron::parse(text);
  auto zone = s::find_zone("Europe/Berlin");
  if (!cron || !zone) {
    state.SkipWithError("parse or find_zone failed");
    return;
  }
  state.SetLabel(text);
  const s::TimePoint origin = std::chrono::sys_days{std::chrono::year{2026} / 1 / 1};
  const auto step = std::chrono::minutes{7} + std::chrono::seconds{13};
  s::TimePoint at = origin;
  for (auto _ : state) {
    auto next = cron->next_after(at, **zone);
    benchmark::DoNotOptimize(next);
    at += step;
    if (at > origin + std::chrono::days{365}) at = origin;
  }
}
BENCHMARK(BM_NextAfter)->DenseRange(0, std::size(kExpressions) - 1);

void BM_Parse(benchmark::State& state) {
  for (auto _ : state) {
    auto cron = s::Cron::parse("*/15 9-17 * JAN-JUN MON-FRI");
    benchmark::DoNotOptimize(cron);
  }
}
BENCHMARK(BM_Parse);

}  // namespace

BENCHMARK_MAIN();
