// Registry benchmarks (Google Benchmark). Run: build/bench/registry_bench
//
// BM_Lookup/<impl>/<flows>/threads:<n>: one lookup by slug per iteration, over all slugs in a
// shuffled order, for flowreg's registry (find through the per-thread cache, and an explicit
// Reader), an unsynchronized std::unordered_map (the baseline) and a std::shared_mutex-guarded map.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "flowreg/flow_registry.hpp"
#include "flowreg/tools/handle_registry.hpp"

namespace {

using flowreg::FlowDef;
using flowreg::FlowRegistry;
using flowreg::Module;
using flowreg::StepDef;

FlowDef make_flow(std::string slug) {
  FlowDef f;
  f.slug = std::move(slug);
  StepDef s;
  s.slug = "run";
  s.handler = "bench.run";
  f.steps.push_back(std::move(s));
  return f;
}

// Heterogeneous lookup, so that the baselines do not build a std::string per lookup.
struct SlugHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
using Map = std::unordered_map<std::string, FlowDef, SlugHash, std::equal_to<>>;

struct Tables {
  std::vector<std::string> slugs;
  std::vector<std::string_view> order;  // lookup order: every slug, shuffled
  FlowRegistry registry;
  Map plain;
  Map guarded;
  mutable std::shared_mutex guard;
};

std::string slug_of(std::size_t i) { return "flow_" + std::to_string(i * 7919 % 1000003); }

const Tables& tables(std::size_t n) {
  static std::mutex mutex;
  static std::map<std::size_t, std::unique_ptr<Tables>> all;
  std::lock_guard lock(mutex);
  auto& t = all[n];
  if (!t) {
    t = std::make_unique<Tables>();
    Module m{"bench", "", {}, nullptr};
    for (std::size_t i = 0; i < n; ++i) {
      t->slugs.push_back(slug_of(i));
      m.flows.push_back(make_flow(t->slugs.back()));
      t->plain.emplace(t->slugs.back(), m.flows.back());
      t->guarded.emplace(t->slugs.back(), m.flows.back());
    }
    if (!t->registry.register_module(std::move(m))) std::abort();
    for (const auto& s : t->slugs) t->order.push_back(s);
    std::shuffle(t->order.begin(), t->order.end(), std::mt19937_64(42));
  }
  return *t;
}

template <class Find>
void lookup_loop(benchmark::State& state, const Tables& t, Find&& find) {
  std::size_t i = static_cast<std::size_t>(state.thread_index()) * 7919 % t.order.size();
  for (auto _ : state) {
    benchmark::DoNotOptimize(find(t.order[i]));
    if (++i == t.order.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Lookup_flowreg(benchmark::State& state) {
  const Tables& t = tables(static_cast<std::size_t>(state.range(0)));
  lookup_loop(state, t, [&](std::string_view s) { return t.registry.find(s); });
}

void BM_Lookup_flowreg_reader(benchmark::State& state) {
  const Tables& t = tables(static_cast<std::size_t>(state.range(0)));
  FlowRegistry::Reader reader(t.registry);
  lookup_loop(state, t, [&](std::string_view s) { return reader.find(s); });
}

void BM_Lookup_unordered_map(benchmark::State& state) {
  const Tables& t = tables(static_cast<std::size_t>(state.range(0)));
  lookup_loop(state, t, [&](std::string_view s) {
    auto it = t.plain.find(s);
    return it == t.plain.end() ? nullptr : &it->second;
  });
}

void BM_Lookup_shared_mutex(benchmark::State& state) {
  const Tables& t = tables(static_cast<std::size_t>(state.range(0)));
  lookup_loop(state, t, [&](std::string_view s) {
    std::shared_lock lock(t.guard);
    auto it = t.guarded.find(s);
    return it == t.guarded.end() ? nullptr : &it->second;
  });
}

// Lookups while another thread republishes a small module 60 times a second.
void BM_LookupDuringRepublish_flowreg(benchmark::State& state) {
  const Tables& t = tables(static_cast<std::size_t>(state.range(0)));
  auto& registry = const_cast<FlowRegistry&>(t.registry);
  std::atomic<bool> stop{false};
  std::atomic<long> publishes{0};
  std::thread writer([&] {
    while (!stop.load()) {
      Module m{"churn", "", {make_flow("churn_flow")}, nullptr};
      (void)registry.replace_module(std::move(m));
      ++publishes;
      std::this_thread::sleep_for(std::chrono::milliseconds(16));
    }
  });
  lookup_loop(state, t, [&](std::string_view s) { return t.registry.find(s); });
  stop = true;
  writer.join();
  (void)registry.unregister_module("churn");
  state.counters["publishes"] = static_cast<double>(publishes.load());
}

// Registering (and unregistering) one module of 10 flows into a table of N flows.
void BM_RegisterModule(benchmark::State& state) {
  const Tables& t = tables(static_cast<std::size_t>(state.range(0)));
  auto& registry = const_cast<FlowRegistry&>(t.registry);
  std::vector<FlowDef> flows;
  for (int i = 0; i < 10; ++i) flows.push_back(make_flow("extra_" + std::to_string(i)));
  for (auto _ : state) {
    if (!registry.register_module(Module{"extra", "", flows, nullptr})) std::abort();
    state.PauseTiming();
    (void)registry.unregister_module("extra");
    state.ResumeTiming();
  }
}

struct NoOptions {
  bool operator==(const NoOptions&) const = default;
};
using Handles = flowreg::HandleRegistry<std::int64_t, int, NoOptions>;

Handles& handles() {
  static Handles* registry = [] {
    auto* r = new Handles();
    (void)r->start();
    return r;
  }();
  return *registry;
}

// get_or_start for a key that is already started: the hot path of "the flow's loop, please".
void BM_GetOrStart_existing(benchmark::State& state) {
  Handles& r = handles();
  (void)r.get_or_start(
      -1, [] { return flowreg::Result<std::shared_ptr<int>>(std::make_shared<int>(0)); });
  for (auto _ : state) {
    auto h = r.get_or_start(
        -1, [] { return flowreg::Result<std::shared_ptr<int>>(std::make_shared<int>(0)); });
    benchmark::DoNotOptimize(h);
  }
  state.SetItemsProcessed(state.iterations());
}

// Every thread asks for the same sequence of fresh keys: at 64 threads, 64 concurrent callers race
// for each key, one runs the (cheap) factory, the others wait for it and share the handle.
void BM_GetOrStart_fresh_keys(benchmark::State& state) {
  Handles& r = handles();
  static std::atomic<std::int64_t> base{0};
  std::int64_t key = base.load() + 1;
  std::atomic<long> started{0};
  for (auto _ : state) {
    auto h = r.get_or_start(key++, [&] {
      started.fetch_add(1, std::memory_order_relaxed);
      return flowreg::Result<std::shared_ptr<int>>(std::make_shared<int>(1));
    });
    benchmark::DoNotOptimize(h);
  }
  std::int64_t seen = base.load();
  while (seen < key && !base.compare_exchange_weak(seen, key)) {
  }
  state.SetItemsProcessed(state.iterations());
}

}  // namespace

BENCHMARK(BM_GetOrStart_existing)
    ->Name("BM_GetOrStart/existing")
    ->Threads(1)
    ->Threads(2)
    ->Threads(64);
BENCHMARK(BM_GetOrStart_fresh_keys)
    ->Name("BM_GetOrStart/fresh_keys")
    ->Threads(1)
    ->Threads(64)
    ->UseRealTime();

BENCHMARK(BM_Lookup_flowreg)
    ->Name("BM_Lookup/flowreg")
    ->Arg(1000)
    ->Arg(100000)
    ->Threads(1)
    ->Threads(2);
BENCHMARK(BM_Lookup_flowreg_reader)
    ->Name("BM_Lookup/flowreg_reader")
    ->Arg(1000)
    ->Arg(100000)
    ->Threads(1)
    ->Threads(2);
BENCHMARK(BM_Lookup_unordered_map)
    ->Name("BM_Lookup/unordered_map")
    ->Arg(1000)
    ->Arg(100000)
    ->Threads(1)
    ->Threads(2);
BENCHMARK(BM_Lookup_shared_mutex)
    ->Name("BM_Lookup/shared_mutex")
    ->Arg(1000)
    ->Arg(100000)
    ->Threads(1)
    ->Threads(2);
BENCHMARK(BM_LookupDuringRepublish_flowreg)
    ->Name("BM_LookupDuringRepublish/flowreg")
    ->Arg(100000)
    ->Threads(1)
    ->Threads(2);
BENCHMARK(BM_RegisterModule)->Arg(1000)->Arg(10000)->Arg(100000)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
