// store_bench: throughput of the run store on its own embedded cluster (a temporary data
// directory, default durability: fsync and synchronous_commit on), stopped and removed at the end.
//
//   store_bench [runs=20000] [batch=64]
//
// Figures printed:
//   start, one call per run          start_run() N times on one connection (runs/s)
//   start, batched                   start_runs() in chunks of 500 (runs/s)
//   drain single-step, 1 / 2 conns   claim(batch) + one complete() per batch, from 1 or 2
//                                    threads, each with its own connection (runs/s)
//   drain 3-step chain, 1 / 2 conns  the same over a chain a -> b -> c (runs/s and tasks/s)
// No handler work: this measures the store's cost per task.

#include <fmt/format.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/flow.hpp"
#include "store/run_store.hpp"
#include "temp_cluster.hpp"

namespace fs = std::filesystem;
using namespace flowreg;
using namespace flowreg::detail;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

[[noreturn]] void die(const std::string& what, const Error& e) {
  throw std::runtime_error(what + ": " + e.format());
}

template <class T>
T value_or_die(Result<T> r, const std::string& what) {
  if (!r) die(what, r.error());
  return std::move(*r);
}

FlowDef make_flow(const std::string& slug, int steps) {
  FlowDef f;
  f.slug = slug;
  f.module = "bench";
  for (int i = 0; i < steps; ++i) {
    StepDef s;
    s.slug = fmt::format("s{}", i);
    s.handler = "bench.noop";
    if (i > 0) s.depends_on = {fmt::format("s{}", i - 1)};
    f.steps.push_back(s);
  }
  return f;
}

void start_batched(RunStore& store, const FlowKey& key, int runs) {
  std::vector<Json> chunk;
  for (int i = 0; i < runs; i += 500) {
    chunk.assign(static_cast<std::size_t>(std::min(500, runs - i)), Json{{"n", i}});
    value_or_die(store.start_runs(key.slug, key.version, chunk), "start_runs");
  }
}

// Claims and completes until `tasks` tasks are done, from `threads` connections; returns seconds.
double drain(const std::string& conninfo, const FlowKey& key, long tasks, int threads, int batch) {
  std::atomic<long> done{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> pool;
  const auto t0 = Clock::now();
  for (int w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      try {
        auto store = value_or_die(RunStore::connect(conninfo), "connect");
        const std::string worker = fmt::format("bench-{}", w);
        std::vector<Completion> completions;
        while (done.load() < tasks && !failed.load()) {
          auto claimed = value_or_die(store.claim(worker, std::span(&key, 1), batch), "claim");
          if (claimed.empty()) continue;
          completions.clear();
          for (const auto& t : claimed) completions.push_back({t.id, t.attempt, Json{{"ok", 1}}});
          auto rejected = value_or_die(store.complete(completions), "complete");
          if (!rejected.empty()) throw std::runtime_error("completions rejected");
          done += static_cast<long>(claimed.size());
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "worker %d: %s\n", w, e.what());
        failed = true;
      }
    });
  for (auto& t : pool) t.join();
  if (failed) throw std::runtime_error("drain failed");
  return seconds_since(t0);
}

void run_bench(const std::string& conninfo, int runs, int batch) {
  auto store = value_or_die(RunStore::connect(conninfo), "connect");
  std::printf("store_bench: %d runs, batch %d, PostgreSQL with fsync and synchronous_commit on\n",
              runs, batch);

  // Single-step flow, 1 connection; runs started one call at a time.
  {
    auto flow = make_flow("single_a", 1);
    FlowKey key{flow.slug, flow_version(flow)};
    value_or_die(store.upsert_flow(flow, key.version), "upsert");
    const auto t0 = Clock::now();
    for (int i = 0; i < runs; ++i)
      value_or_die(store.start_run(key.slug, key.version, Json{{"n", i}}), "start_run");
    const double s = seconds_since(t0);
    std::printf("start, one call per run:          %8.0f runs/s  (%.2f s)\n", runs / s, s);
    const double d = drain(conninfo, key, runs, 1, batch);
    std::printf("drain single-step, 1 connection:  %8.0f runs/s  (%.2f s)\n", runs / d, d);
  }
  // Single-step flow, 2 connections; runs started in batches.
  {
    auto flow = make_flow("single_b", 1);
    FlowKey key{flow.slug, flow_version(flow)};
    value_or_die(store.upsert_flow(flow, key.version), "upsert");
    const auto t0 = Clock::now();
    start_batched(store, key, runs);
    const double s = seconds_since(t0);
    std::printf("start, batched by 500:            %8.0f runs/s  (%.2f s)\n", runs / s, s);
    const double d = drain(conninfo, key, runs, 2, batch);
    std::printf("drain single-step, 2 connections: %8.0f runs/s  (%.2f s)\n", runs / d, d);
  }
  // Three-step chain, 1 and 2 connections.
  for (int threads : {1, 2}) {
    auto flow = make_flow(fmt::format("chain_{}", threads), 3);
    FlowKey key{flow.slug, flow_version(flow)};
    value_or_die(store.upsert_flow(flow, key.version), "upsert");
    const int chain_runs = runs / 2;
    start_batched(store, key, chain_runs);
    const double d = drain(conninfo, key, 3L * chain_runs, threads, batch);
    std::printf(
        "drain 3-step chain, %d connection%s: %6.0f runs/s, %6.0f tasks/s  (%d runs, %.2f s)\n",
        threads, threads == 1 ? " " : "s", chain_runs / d, 3 * chain_runs / d, chain_runs, d);
  }
  auto done = value_or_die(store.list_runs(RunFilter{std::nullopt, RunStatus::started, 1}), "list");
  if (!done.empty()) throw std::runtime_error("a run is still started after the drains");
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::atoi(argv[1]) : 20000;
  const int batch = argc > 2 ? std::atoi(argv[2]) : 64;
  if (runs <= 0 || batch <= 0) {
    std::fprintf(stderr, "usage: store_bench [runs=20000] [batch=64]\n");
    return 2;
  }
  return flowreg::bench::on_temp_cluster(
      "store_bench", [&](const std::string& conninfo) { run_bench(conninfo, runs, batch); });
}
