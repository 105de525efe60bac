// event_bench: what one event costs to resume the runs waiting for it (docs/flows.md#wait-steps),
// on its own embedded cluster (a temporary data directory, default durability), stopped and
// removed at the end.
//
//   event_bench [others=50000] [rounds=3]
//
// The flow: a root wait step on event "paid" matching /order of the run's input, then a step of
// one task. First `others` runs wait, each for an order of its own (no event below matches them).
// Then, for each round and each size M of 1, 100, 1,000 and 10,000: M runs are started waiting
// for one new order, and one send_event() of that order resumes them (checked: exactly M). Printed
// per size: the call's time (median of the rounds) and per run resumed; a cost per run that stays
// flat from 1,000 to 10,000, beside the runs waiting for other values, is what "bounded" means.
// Then the same event sent again (nothing waits for it any more): the cost of an event that
// resumes none, beside every waiting run.

#include <fmt/format.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "flowreg/flow.hpp"
#include "store/run_store.hpp"
#include "temp_cluster.hpp"

namespace fs = std::filesystem;
using namespace flowreg;
using namespace flowreg::detail;

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

template <class T>
T value_or_die(Result<T> r, const std::string& what) {
  if (!r) throw std::runtime_error(what + ": " + r.error().format());
  return std::move(*r);
}

FlowDef paid_flow() {
  FlowDef f;
  f.slug = "paid";
  f.module = "bench";
  StepDef wait;
  wait.slug = "paid";
  wait.kind = StepKind::wait;
  wait.wait = Wait{};
  wait.wait->event = "paid";
  wait.wait->match = {{"/order", "/order"}};
  StepDef ship;
  ship.slug = "ship";
  ship.handler = "bench.noop";
  ship.depends_on = {"paid"};
  f.steps = {wait, ship};
  return f;
}

void start_waiting(RunStore& store, const FlowKey& key, long runs, const std::string& order_prefix,
                   bool distinct) {
  std::vector<Json> chunk;
  for (long i = 0; i < runs; i += 1000) {
    chunk.clear();
    for (long j = i; j < std::min(runs, i + 1000); ++j)
      chunk.push_back(
          Json{{"order", distinct ? fmt::format("{}{}", order_prefix, j) : order_prefix}});
    value_or_die(store.start_runs(key.slug, key.version, chunk), "start_runs");
  }
}

void run_bench(const std::string& conninfo, long others, int rounds) {
  auto store = value_or_die(RunStore::connect(conninfo), "connect");
  const FlowDef flow = paid_flow();
  const FlowKey key{flow.slug, flow_version(flow)};
  value_or_die(store.upsert_flow(flow, key.version), "upsert_flow");
  const auto t0 = Clock::now();
  start_waiting(store, key, others, "other-", true);
  std::printf("event_bench: %ld runs waiting for orders of their own, started in %.0f ms\n", others,
              ms_since(t0));
  std::printf("%10s %14s %16s\n", "resumed", "ms (median)", "us per run");
  std::vector<double> per_run_at;
  for (long size : {1L, 100L, 1000L, 10000L}) {
    std::vector<double> ms;
    for (int r = 0; r < rounds; ++r) {
      const std::string order = fmt::format("o{}-{}", size, r);
      start_waiting(store, key, size, order, false);
      const auto t = Clock::now();
      const auto sent = value_or_die(store.send_event("paid", Json{{"order", order}}), "event");
      ms.push_back(ms_since(t));
      if (sent.resumed != size)
        throw std::runtime_error(
            fmt::format("the event resumed {} runs, not {}", sent.resumed, size));
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    std::printf("%10ld %14.2f %16.1f\n", size, median, 1000.0 * median / static_cast<double>(size));
    per_run_at.push_back(1000.0 * median / static_cast<double>(size));
  }
  std::printf("per-run cost at 10,000 / at 1,000: %.2f\n", per_run_at[3] / per_run_at[2]);
  std::vector<double> none;
  for (int r = 0; r < rounds; ++r) {
    const auto t = Clock::now();
    const auto sent = value_or_die(
        store.send_event("paid", Json{{"order", fmt::format("o10000-{}", r)}}), "event");
    none.push_back(ms_since(t));
    if (sent.resumed != 0) throw std::runtime_error("an event resumed runs twice");
  }
  std::sort(none.begin(), none.end());
  std::printf("an event resuming none, beside %ld waiting runs: %.2f ms (median)\n", others,
              none[none.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const long others = argc > 1 ? std::atol(argv[1]) : 50000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 3;
  if (others < 0 || rounds <= 0) {
    std::fprintf(stderr, "usage: event_bench [others=50000] [rounds=3]\n");
    return 2;
  }
  return flowreg::bench::on_temp_cluster(
      "event_bench", [&](const std::string& conninfo) { run_bench(conninfo, others, rounds); });
}
