// A worker serving 500 flow versions (built here, their steps run by the real fixture plugin
// tests/plugins/wprobe.cpp) on the embedded cluster: its PostgreSQL connections stay within what
// its options allow, its threads do not grow with the flows it serves, an idle worker does not poll
// each flow on its own, and a flow flooded with runs does not starve a quiet one.
//
// The figures measured (connections, threads, commits per second while idle, how long the quiet
// run waited) are printed with MESSAGE; the bounds asserted are generous (tens of times the
// expected figures), so that a noisy machine passes and a design that polls or runs per flow does
// not.

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/result_text.hpp"
#include "worker/worker.hpp"

namespace {

namespace fs = std::filesystem;
namespace fd = flowreg::detail;
using Json = nlohmann::json;
using namespace std::chrono_literals;
using flowreg::pgtest::eventually;
using flowreg::pgtest::query_one;

constexpr int kFlows = 500;
constexpr int kPluginFlows = 2;  // wprobe's own: wprobe_single, wprobe_chain
constexpr const char* kAppName = "flowreg_many_flows";
// wprobe's handler reads its options from an object with "log" (the file it appends a line to).
const Json kInput = {{"log", "/dev/null"}};

std::string flow_slug(int i) {
  std::string n = std::to_string(i);
  return "many_" + std::string(4 - n.size(), '0') + n;
}

// The flows of module "many": one step each, run by wprobe's handler "record".
flowreg::Module many_flows() {
  flowreg::Module m;
  m.name = "many";
  for (int i = 0; i < kFlows; ++i) {
    flowreg::FlowDef def;
    def.slug = flow_slug(i);
    def.description = "one of many";
    flowreg::StepDef step;
    step.slug = "only";
    step.handler = "wprobe.record";
    def.steps.push_back(step);
    m.flows.push_back(std::move(def));
  }
  return m;
}

// A measured figure: in doctest's report of a failing case, and on stdout always.
template <class... Parts>
void figure(const Parts&... parts) {
  std::ostringstream text;
  (text << ... << parts);
  MESSAGE(text.str());
  std::cout << "[figure] " << text.str() << std::endl;
}

int threads_of_this_process() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// A worker of this process serving wprobe's flows and the 500 of module "many", on a fresh
// migrated database; its connections carry application_name kAppName.
struct ManyFlows {
  std::string conninfo;  // the test's (no application name)
  fs::path dir;
  fd::WorkerOptions options;
  int threads_before = 0;
  std::unique_ptr<fd::Worker> worker;

  explicit ManyFlows(const std::string& name) {
    conninfo = flowreg::pgtest::migrated_database(name);
    dir = flowreg::pgtest::test_root() / name;
    fs::remove_all(dir);
    fs::create_directories(dir / "plugins");
    fs::copy_file(fs::path(FLOWREG_FIXTURE_DIR) / "wprobe_v1.so", dir / "plugins" / "wprobe.so");

    options.name = name;
    options.conninfo = conninfo + " application_name=" + kAppName;
    options.concurrency = 4;
    options.store_connections = 2;
    options.poll_interval = 1'000ms;  // the default
    const fs::path d = dir;
    const auto source = [d]() -> flowreg::Result<fd::FlowSource> {
      fd::FlowSource src;
      src.registry = std::make_unique<flowreg::FlowRegistry>();
      flowreg::PluginLoaderOptions lo;
      lo.settings.dir = d / "plugins";
      lo.cache_dir = d / "cache";
      src.loader = std::make_unique<flowreg::PluginLoader>(*src.registry, lo);
      if (auto scanned = src.loader->scan(); !scanned) return tl::unexpected(scanned.error());
      if (auto added = src.registry->register_module(many_flows()); !added)
        return tl::unexpected(added.error());
      return src;
    };
    threads_before = threads_of_this_process();
    auto started = fd::Worker::start(options, source);
    REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
    worker = std::move(*started);
    const bool serving = eventually(
        [&] {
          return worker->serving().size() == kFlows + kPluginFlows &&
                 count("flows") == kFlows + kPluginFlows;
        },
        180s);
    REQUIRE_MESSAGE(serving, "serving " << worker->serving().size() << " flow versions");
  }
  ~ManyFlows() {
    if (worker) worker->stop();
  }

  int count(const std::string& where) const {
    return std::stoi(query_one(conninfo, "SELECT count(*) FROM flowreg." + where));
  }
  int connections() const {
    return std::stoi(query_one(conninfo, std::string("SELECT count(*) FROM pg_stat_activity "
                                                     "WHERE application_name = '") +
                                             kAppName + "'"));
  }
  long commits() const {
    return std::stol(query_one(conninfo,
                               "SELECT xact_commit FROM pg_stat_database "
                               "WHERE datname = current_database()"));
  }
  std::string version_of(const std::string& slug) const {
    return query_one(conninfo, "SELECT version FROM flowreg.flows WHERE slug = '" + slug + "'");
  }
  std::vector<fd::RunId> start_runs(const std::string& slug, const Json& input, int n) const {
    auto store = fd::RunStore::connect(conninfo);
    REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
    std::vector<Json> inputs(static_cast<std::size_t>(n), input);
    auto runs = store->start_runs(slug, version_of(slug), inputs);
    REQUIRE_MESSAGE(runs, flowreg::testing::failure_text(runs));
    return *runs;
  }
};

}  // namespace

TEST_SUITE("worker_many_flows") {
  TEST_CASE("500 flow versions: connections stay within store_connections plus three") {
    ManyFlows m("w_many_conns");
    // Runs of many flows at once make every connection the worker may open busy.
    for (int i = 0; i < kFlows; i += 25) m.start_runs(flow_slug(i), kInput, 20);
    int most = 0;
    const bool done = eventually(
        [&] {
          most = std::max(most, m.connections());
          return m.count("runs WHERE status = 'completed'") == 20 * kFlows / 25;
        },
        120s);
    REQUIRE(done);
    most = std::max(most, m.connections());
    figure("connections of a worker serving ", kFlows + kPluginFlows, " flow versions: at most ",
           most, " seen (store_connections = ", m.options.store_connections, ")");
    // The loops' pool, the keeper's connection, the listener's and the scheduler's (schedules).
    CHECK(most <= m.options.store_connections + 3);
    CHECK(most >= 1);
  }

  TEST_CASE("500 flow versions: the threads do not grow with the flows served") {
    ManyFlows m("w_many_threads");
    const int added = threads_of_this_process() - m.threads_before;
    figure("threads added by a worker serving ", kFlows + kPluginFlows, " flow versions: ", added,
           " (concurrency ", m.options.concurrency, ", lanes ", m.options.lanes, ")");
    // Handler threads, claim lanes, and a fixed few (listener, keeper, supervisors, reconciler,
    // plugin watcher): never one per flow.
    CHECK(added <= m.options.concurrency + m.options.lanes + 16);
  }

  TEST_CASE("500 idle flow versions cost no polling storm: a few commits per second") {
    ManyFlows m("w_many_idle");
    // Past the start (each new flow version claims once, alone) and the statistics of it: a backend
    // that went idle reports its last counts up to 10 s later.
    std::this_thread::sleep_for(15s);
    const long before = m.commits();
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(10s);
    const long after = m.commits();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double per_second = static_cast<double>(after - before) / seconds;
    figure("idle worker serving ", kFlows + kPluginFlows, " flow versions, poll_interval ",
           m.options.poll_interval.count(), " ms: ", after - before, " commits in ", seconds,
           " s = ", per_second, "/s");
    // One poll across all flows per interval, a heartbeat per 5 s, the statistics' own lag: a
    // loop polling each flow would commit 500 times a second.
    CHECK(per_second < 25.0);
  }

  TEST_CASE("a flow flooded with thousands of runs does not starve a quiet one") {
    ManyFlows m("w_many_fair");
    constexpr int kFlood = 4000;
    const std::string flood = flow_slug(0), quiet = flow_slug(kFlows - 1);
    m.start_runs(flood, Json{{"log", "/dev/null"}, {"sleep_ms", 8}}, kFlood);
    const auto flood_completed = [&] {
      return m.count("runs WHERE status = 'completed' AND flow_slug = '" + flood + "'");
    };
    REQUIRE(eventually([&] { return flood_completed() >= 100; }, 60s));
    const auto quiet_run = m.start_runs(quiet, kInput, 1).at(0);
    REQUIRE(eventually(
        [&] {
          return m.count("runs WHERE status = 'completed' AND id = '" + quiet_run + "'") == 1;
        },
        120s));
    // Its task has left the queue: the run's end bounds when its handler started (the handlers
    // of these flows return at once).
    const std::string waited_ms =
        query_one(m.conninfo,
                  "SELECT round(extract(epoch FROM finished_at - created_at) * 1000) FROM "
                  "flowreg.runs WHERE id = '" +
                      quiet_run + "'");
    const int flood_done_then = std::stoi(query_one(
        m.conninfo, "SELECT count(*) FROM flowreg.runs f, flowreg.runs q WHERE q.id = '" +
                        quiet_run + "' AND f.flow_slug = '" + flood +
                        "' AND f.status = 'completed' AND f.finished_at <= q.finished_at"));
    figure("the quiet flow's run ended ", waited_ms, " ms after it was created, with ",
           flood_done_then, " of ", kFlood, " flooded runs done");
    // The flood was still going on: the quiet run did not merely wait for it to end.
    CHECK(flood_done_then < kFlood);
    CHECK(std::stoi(waited_ms) < 3'000);
  }
}
