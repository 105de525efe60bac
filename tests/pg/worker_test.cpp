// `flowreg worker` on the embedded cluster: real worker processes (the flowreg binary) serving
// the real fixture plugin tests/plugins/wprobe.cpp, killed, stopped, restarted and raced; and the
// supervision tree in process, with a loop made to fail.

#include "worker/worker.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "flowreg/plugins.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace {

namespace fs = std::filesystem;
namespace fd = flowreg::detail;
using flowreg::test::Child;
using Json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using flowreg::pgtest::eventually;
using flowreg::pgtest::query_one;
using flowreg::pgtest::read_file;

// A scratch directory `name` under the test root holding plugins/wprobe.so (version 1), for a
// worker started in this process.
fs::path wprobe_dir(const std::string& name) {
  const fs::path dir = flowreg::pgtest::test_root() / name;
  fs::remove_all(dir);
  fs::create_directories(dir / "plugins");
  fs::copy_file(fs::path(FLOWREG_FIXTURE_DIR) / "wprobe_v1.so", dir / "plugins" / "wprobe.so");
  return dir;
}

// The flow source of an in-process worker: the plugins of `dir`/plugins, cached in `dir`/cache.
fd::FlowSourceFactory wprobe_source(const fs::path& dir) {
  return [dir]() -> flowreg::Result<fd::FlowSource> {
    fd::FlowSource src;
    src.registry = std::make_unique<flowreg::FlowRegistry>();
    flowreg::PluginLoaderOptions lo;
    lo.settings.dir = dir / "plugins";
    lo.cache_dir = dir / "cache";
    src.loader = std::make_unique<flowreg::PluginLoader>(*src.registry, lo);
    if (auto scanned = src.loader->scan(); !scanned) return tl::unexpected(scanned.error());
    return src;
  };
}

// A scratch directory with plugins/wprobe.so, a configuration and a fresh migrated database.
struct Scene : flowreg::pgtest::WorkerScene {
  fs::path log() const { return dir / "handler.log"; }
  fs::path plugins() const { return dir / "plugins"; }

  fd::RunStore store() const {
    auto s = fd::RunStore::connect(conninfo);
    REQUIRE_MESSAGE(s, flowreg::testing::failure_text(s));
    return std::move(*s);
  }

  int count(const std::string& where) const {
    return std::stoi(query_one(conninfo, "SELECT count(*) FROM flowreg." + where));
  }

  // Lines of the handlers' log: {run, step, task_index, attempt, pid, version}.
  std::vector<std::vector<std::string>> log_lines() const {
    std::vector<std::vector<std::string>> out;
    std::ifstream in(log());
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::vector<std::string> f;
      for (std::string x; fields >> x;) f.push_back(x);
      out.push_back(std::move(f));
    }
    return out;
  }
};

void install_plugin(const Scene& s, const std::string& fixture) {
  // Renamed into place: the watcher sees one complete file.
  const fs::path tmp = s.plugins() / ".incoming.tmp";
  fs::copy_file(fs::path(FLOWREG_FIXTURE_DIR) / (fixture + ".so"), tmp,
                fs::copy_options::overwrite_existing);
  fs::permissions(tmp, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                           fs::perms::others_read);
  fs::rename(tmp, s.plugins() / "wprobe.so");
}

Scene make_scene(const std::string& name) {
  Scene s;
  s.dir = flowreg::pgtest::test_root() / name;
  fs::remove_all(s.dir);
  fs::create_directories(s.plugins());
  for (const auto& d : {flowreg::pgtest::test_root(), s.dir, s.plugins()})
    fs::permissions(d, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                           fs::perms::others_read | fs::perms::others_exec);
  install_plugin(s, "wprobe_v1");
  s.conninfo = flowreg::pgtest::migrated_database(name);
  std::ofstream(s.config()) << "plugins:\n  dir: plugins\n  watch: true\n"
                            << "database:\n  url: " << Json(s.conninfo).dump()  // quoted
                            << "\n  data_dir: " << Json((s.dir / "data").string()).dump() << "\n";
  return s;
}

std::vector<fd::RunId> start_runs(const Scene& s, const std::string& slug,
                                  const std::string& version, const Json& input, int n) {
  auto store = s.store();
  std::vector<Json> inputs(static_cast<std::size_t>(n), input);
  auto runs = store.start_runs(slug, version, inputs);
  REQUIRE_MESSAGE(runs, flowreg::testing::failure_text(runs));
  return *runs;
}

// Starts one run of `slug` whose handler, once it has started, waits until open_gate(s); returns
// the run when its handler has started.
fd::RunId start_gated_run(const Scene& s, const std::string& slug, const std::string& version) {
  const fs::path started = s.dir / "started";
  const auto run = start_runs(s, slug, version,
                              {{"log", s.log().string()},
                               {"gate", (s.dir / "gate").string()},
                               {"started", started.string()}},
                              1)[0];
  REQUIRE(eventually([&] { return fs::exists(started); }, 30s));
  return run;
}

void open_gate(const Scene& s) { std::ofstream(s.dir / "gate") << "open\n"; }

bool all_completed(const Scene& s, int n, std::chrono::milliseconds timeout) {
  return eventually([&] { return s.count("runs WHERE status = 'completed'") == n; }, timeout);
}

}  // namespace

TEST_SUITE("worker") {
  TEST_CASE("a worker killed with SIGKILL mid-task: the task runs again elsewhere, once") {
    auto s = make_scene("w_kill");
    auto a = s.worker("a", {"--lease", "1s"});
    const auto version = s.wait_serving("a", "wprobe_single");
    const fs::path hung = s.dir / "hung";
    const auto run =
        start_runs(s, "wprobe_single", version,
                   {{"log", s.log().string()}, {"hang_on_first", hung.string()}}, 1)[0];
    REQUIRE_MESSAGE(eventually([&] { return fs::exists(hung); }, 30s), s.err("a"));
    a.signal(SIGKILL);
    CHECK(a.wait(10s) == 128 + SIGKILL);

    auto b = s.worker("b", {"--lease", "1s"});
    REQUIRE_MESSAGE(all_completed(s, 1, 60s), s.err("b"));
    // The step's result is recorded once: its task, completed on its second attempt by b, has
    // left the queue; its step state holds the attempts, the worker and the output.
    CHECK(s.count("tasks WHERE run_id = '" + run + "'") == 0);
    CHECK(query_one(s.conninfo,
                    "SELECT status || ' ' || attempts || ' ' || worker_id || ' ' || "
                    "(output->>'pid') FROM flowreg.steps WHERE run_id = '" +
                        run + "'") == "completed 2 b " + std::to_string(b.pid()));
    CHECK(query_one(s.conninfo, "SELECT output->'only'->>'attempt' FROM flowreg.runs WHERE id = '" +
                                    run + "'") == "2");
    // The attempt that died with a is kept (migration 0019): its lease expired, and b's claim
    // queued the task again. The completing attempt is the step's, not a row.
    CHECK(
        query_one(s.conninfo,
                  "SELECT string_agg(attempt || ' ' || worker_id || ' ' || outcome, ', ' ORDER BY "
                  "attempt) FROM flowreg.task_attempts WHERE run_id = '" +
                      run + "'") == "1 a lease_expired");
    const auto lines = s.log_lines();
    REQUIRE(lines.size() == 2);
    CHECK(lines[0][3] == "1");
    CHECK(lines[0][4] == std::to_string(a.pid()));
    CHECK(lines[1][3] == "2");
    CHECK(lines[1][4] == std::to_string(b.pid()));
  }

  TEST_CASE("two and four workers drain the same runs: no task runs twice, none is lost") {
    for (const int n : {2, 4}) {
      CAPTURE(n);
      auto s = make_scene("w_drain_" + std::to_string(n));
      std::vector<Child> workers;
      for (int i = 0; i < n; ++i)
        workers.push_back(
            s.worker("w" + std::to_string(i), {"--concurrency", "4", "--batch", "8"}));
      std::string version;
      for (int i = 0; i < n; ++i) version = s.wait_serving("w" + std::to_string(i), "wprobe_chain");
      constexpr int kRuns = 300;
      start_runs(s, "wprobe_chain", version, {{"log", s.log().string()}, {"sleep_ms", 2}}, kRuns);
      REQUIRE_MESSAGE(all_completed(s, kRuns, 180s), s.err("w0"));

      // Every task ran once and left the queue; its step counts the attempt.
      CHECK(s.count("tasks") == 0);
      CHECK(s.count("steps WHERE status = 'completed' AND attempts = 1") == 3 * kRuns);
      const auto lines = s.log_lines();
      std::set<std::pair<std::string, std::string>> tasks;
      std::set<std::string> pids;
      for (const auto& l : lines) {
        tasks.emplace(l.at(0), l.at(1));
        pids.insert(l.at(4));
      }
      CHECK(lines.size() == 3 * kRuns);  // each handler ran once
      CHECK(tasks.size() == 3 * kRuns);  // and every task ran
      CHECK(pids.size() >= 2);           // the work was shared
      for (auto& w : workers) w.signal(SIGTERM);
      for (auto& w : workers) CHECK(w.wait(30s) == 0);
      CHECK(s.count("workers WHERE stopped_at IS NOT NULL") == n);
      const auto listed = flowreg::test::run_process(
          {FLOWREG_BINARY, "--config", s.config().string(), "workers", "--json"});
      REQUIRE_MESSAGE(listed.exit_code == 0, listed.err);
      const auto seen = Json::parse(listed.out);
      REQUIRE(seen.size() == static_cast<std::size_t>(n));
      for (const auto& w : seen) {
        CHECK(w["stopped"] == true);
        CHECK(w["flows"].size() == 2);  // wprobe_single and wprobe_chain
      }
    }
  }

  TEST_CASE("PostgreSQL restarted mid-run: the workers reconnect and every run completes") {
    auto s = make_scene("w_pg_restart");
    auto a = s.worker("a", {"--concurrency", "4"});
    auto b = s.worker("b", {"--concurrency", "4"});
    const auto version = s.wait_serving("a", "wprobe_single");
    s.wait_serving("b", "wprobe_single");
    constexpr int kRuns = 400;
    start_runs(s, "wprobe_single", version, {{"log", s.log().string()}, {"sleep_ms", 20}}, kRuns);
    REQUIRE(eventually([&] { return s.count("runs WHERE status = 'completed'") >= 40; }, 60s));

    auto& cluster = flowreg::pgtest::shared_cluster();
    auto stopped = cluster.stop();
    REQUIRE_MESSAGE(stopped, flowreg::testing::failure_text(stopped));
    std::this_thread::sleep_for(500ms);  // the workers find the database gone
    auto started = cluster.start();
    REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));

    REQUIRE_MESSAGE(all_completed(s, kRuns, 120s), s.err("a") << s.err("b"));
    CHECK(s.count("tasks") == 0);
    CHECK(s.count("steps WHERE status = 'completed'") == kRuns);
    CHECK(a.wait(0ms) == std::nullopt);  // both rode it out
    CHECK(b.wait(0ms) == std::nullopt);
    CHECK(s.err("a").find("database unreachable") != std::string::npos);
    a.signal(SIGTERM);
    b.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
    CHECK(b.wait(30s) == 0);
  }

  TEST_CASE("SIGTERM: handlers in flight finish, tasks not started go to other workers at once") {
    auto s = make_scene("w_sigterm");
    auto a = s.worker("a", {"--concurrency", "2", "--batch", "4", "--shutdown-grace", "60s"});
    const auto version = s.wait_serving("a", "wprobe_single");
    const fs::path gate = s.dir / "gate";
    std::vector<fd::RunId> runs;
    for (int i = 0; i < 6; ++i)
      runs.push_back(start_runs(s, "wprobe_single", version,
                                {{"log", s.log().string()},
                                 {"gate", gate.string()},
                                 {"started", (s.dir / ("started_" + std::to_string(i))).string()}},
                                1)[0]);
    // a holds all 6 (2 running, 4 waiting for a thread). Its two handlers must have begun
    // before the SIGTERM: a task whose thread had not picked it up yet is given back too.
    REQUIRE(eventually([&] { return s.count("tasks WHERE status = 'started'") == 6; }, 30s));
    REQUIRE(eventually(
        [&] {
          int begun = 0;
          for (int i = 0; i < 6; ++i)
            begun += fs::exists(s.dir / ("started_" + std::to_string(i))) ? 1 : 0;
          return begun == 2;
        },
        30s));
    a.signal(SIGTERM);
    REQUIRE(eventually([&] { return s.count("tasks WHERE status = 'queued'") == 4; }, 10s));
    CHECK(s.count("tasks WHERE status = 'queued' AND attempt = 0") == 4);  // refunded
    CHECK(a.wait(0ms) == std::nullopt);  // still waiting for its 2 handlers

    auto b = s.worker("b");
    REQUIRE(eventually([&] { return s.count("tasks WHERE worker_id = 'b'") == 4; }, 30s));
    open_gate(s);
    CHECK(a.wait(30s) == 0);
    CHECK(s.err("a").find("4 task(s) given back unstarted, 0 interrupted") != std::string::npos);
    REQUIRE(all_completed(s, 6, 30s));
    // Each ran once (the 4 given back were refunded), 2 on a, 4 on b.
    CHECK(s.count("steps WHERE attempts = 1") == 6);
    CHECK(s.count("steps WHERE worker_id = 'a' AND (output->>'pid')::int = " +
                  std::to_string(a.pid())) == 2);
    CHECK(s.count("steps WHERE worker_id = 'b'") == 4);
    b.signal(SIGTERM);
    CHECK(b.wait(30s) == 0);
  }

  TEST_CASE("SIGTERM: a handler still running at the deadline is given back, and runs again") {
    auto s = make_scene("w_grace");
    auto a = s.worker("a", {"--concurrency", "1", "--shutdown-grace", "1s"});
    const auto version = s.wait_serving("a", "wprobe_single");
    const auto run = start_gated_run(s, "wprobe_single", version);
    a.signal(SIGTERM);
    CHECK(a.wait(20s) == 0);
    CHECK_MESSAGE(
        s.err("a").find("0 task(s) given back unstarted, 1 interrupted") != std::string::npos,
        s.err("a"));
    CHECK(query_one(s.conninfo, "SELECT status || ' ' || attempt FROM flowreg.tasks") ==
          "queued 1");
    CHECK(query_one(s.conninfo, "SELECT error FROM flowreg.tasks").find("interrupted") !=
          std::string::npos);
    open_gate(s);
    auto b = s.worker("b");
    REQUIRE(all_completed(s, 1, 30s));
    CHECK(query_one(s.conninfo,
                    "SELECT attempts || ' ' || worker_id FROM flowreg.steps WHERE "
                    "run_id = '" +
                        run + "'") == "2 b");
  }

  TEST_CASE(
      "a plugin replaced while its handlers run: they finish on the old code, new tasks "
      "run the new one, and the old code stays mapped after (plugin code is never unloaded)") {
    auto s = make_scene("w_replace");
    auto a = s.worker("a", {"--concurrency", "4"});
    const auto version = s.wait_serving("a", "wprobe_single");
    const auto old_run = start_gated_run(s, "wprobe_single", version);

    // Private copies of loaded plugins mapped by the worker.
    const auto mapped_copies = [&] {
      std::set<std::string> files;
      std::ifstream maps("/proc/" + std::to_string(a.pid()) + "/maps");
      for (std::string line; std::getline(maps, line);)
        if (auto at = line.find((s.dir / "data" / "plugin-cache").string());
            at != std::string::npos)
          files.insert(line.substr(at));
      return files.size();
    };
    CHECK(mapped_copies() == 1);
    install_plugin(s, "wprobe_v2");
    REQUIRE_MESSAGE(eventually(
                        [&] {
                          return s.err("a").find("stopping the loop of wprobe_single@" + version +
                                                 " (flow reloaded)") != std::string::npos;
                        },
                        30s),
                    s.err("a"));
    CHECK(mapped_copies() == 2);  // v1 still runs a handler

    const auto new_run = start_runs(s, "wprobe_single", version, {{"log", s.log().string()}}, 1)[0];
    REQUIRE(eventually(
        [&] { return s.count("runs WHERE status = 'completed' AND id = '" + new_run + "'") == 1; },
        30s));
    CHECK(query_one(s.conninfo, "SELECT output->'only'->>'version' FROM flowreg.runs WHERE id = '" +
                                    new_run + "'") == "2");
    CHECK(s.count("runs WHERE status = 'started' AND id = '" + old_run + "'") == 1);

    open_gate(s);
    REQUIRE(all_completed(s, 2, 30s));
    CHECK(query_one(s.conninfo, "SELECT output->'only'->>'version' FROM flowreg.runs WHERE id = '" +
                                    old_run + "'") == "1");
    // v1 is never unloaded: code it started (a thread) may still run. Its staged copy may be pruned
    // from the cache once nothing holds it, but the mapping stays.
    CHECK(mapped_copies() == 2);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE("runs pinned to a replaced version finish on a worker that still has it") {
    auto s = make_scene("w_pinned");
    auto a = s.worker("a");
    const auto v1 = s.wait_serving("a", "wprobe_chain");
    const auto old_run = start_gated_run(s, "wprobe_chain", v1);

    install_plugin(s, "wprobe_v3");  // wprobe_chain gets a step: a new version
    std::string v3;
    REQUIRE_MESSAGE(eventually(
                        [&] {
                          v3 = query_one(s.conninfo,
                                         "SELECT version FROM flowreg.flows WHERE slug = "
                                         "'wprobe_chain' AND version <> '" +
                                             v1 + "'");
                          return !v3.empty();
                        },
                        30s),
                    s.err("a"));
    open_gate(s);
    // Step a (running on the old code) completes; b and c of the old version wait: a serves v3.
    REQUIRE(eventually(
        [&] {
          return s.count("steps WHERE run_id = '" + old_run +
                         "' AND step_slug = 'a' AND status = 'completed'") == 1;
        },
        30s));
    const auto new_run = start_runs(s, "wprobe_chain", v3, {{"log", s.log().string()}}, 1)[0];
    REQUIRE(eventually(
        [&] { return s.count("runs WHERE status = 'completed' AND id = '" + new_run + "'") == 1; },
        30s));
    CHECK(s.count("steps WHERE run_id = '" + new_run + "' AND status = 'completed'") == 4);
    CHECK(s.count("runs WHERE status = 'started' AND id = '" + old_run + "'") == 1);
    CHECK(s.count("tasks WHERE run_id = '" + old_run +
                  "' AND step_slug = 'b' AND status = "
                  "'queued' AND attempt = 0") == 1);

    // Worker b still has version 1 of the plugin: it finishes the old run.
    Scene old_scene = s;
    old_scene.dir = s.dir / "b";
    fs::create_directories(old_scene.plugins());
    fs::permissions(old_scene.dir, fs::perms::owner_all | fs::perms::others_read |
                                       fs::perms::others_exec | fs::perms::group_read |
                                       fs::perms::group_exec);
    fs::permissions(old_scene.plugins(), fs::perms::owner_all | fs::perms::others_read |
                                             fs::perms::others_exec | fs::perms::group_read |
                                             fs::perms::group_exec);
    install_plugin(old_scene, "wprobe_v1");
    std::ofstream(old_scene.config())
        << "plugins:\n  dir: plugins\n  watch: false\n"
        << "database:\n  url: " << Json(s.conninfo).dump()
        << "\n  data_dir: " << Json((old_scene.dir / "data").string()).dump() << "\n";
    auto b = old_scene.worker("b");
    REQUIRE_MESSAGE(all_completed(s, 2, 30s), old_scene.err("b"));
    CHECK(query_one(s.conninfo,
                    "SELECT string_agg(step_slug || ':' || worker_id, ' ' ORDER BY "
                    "step_slug) FROM flowreg.steps WHERE run_id = '" +
                        old_run + "'") == "a:a b:b c:b");
    a.signal(SIGTERM);
    b.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
    CHECK(b.wait(30s) == 0);
  }

  TEST_CASE(
      "regression: `flowreg workers` run right after a worker said 'serving' could miss it; "
      "its heartbeat names what it serves before it says so") {
    const std::string conninfo = flowreg::pgtest::migrated_database("w_announce");
    const fs::path dir = wprobe_dir("w_announce");
    fd::WorkerOptions options;
    options.name = "announce_test";
    options.conninfo = conninfo;
    options.heartbeat_interval = 3'600'000ms;  // no periodic heartbeat comes to the rescue
    const auto source = wprobe_source(dir);
    auto worker = fd::Worker::start(options, source);
    REQUIRE_MESSAGE(worker, flowreg::testing::failure_text(worker));
    REQUIRE((*worker)->await_heartbeat(10s));
    const std::vector<fd::FlowKey> serving = (*worker)->serving();
    REQUIRE_FALSE(serving.empty());

    auto store = fd::RunStore::connect(conninfo);
    REQUIRE(store);
    auto listed = store->list_workers();
    REQUIRE(listed);
    REQUIRE(listed->size() == 1);
    CHECK(listed->front().id == (*worker)->id());
    const auto keys = [](const std::vector<fd::FlowKey>& flows) {
      std::vector<std::string> out;
      for (const auto& f : flows) out.push_back(f.slug + "@" + f.version);
      std::sort(out.begin(), out.end());
      return out;
    };
    CHECK(keys(listed->front().flows) == keys(serving));
    (*worker)->stop();
  }

  TEST_CASE("a flow loop that keeps failing restarts alone, then hits its restart limit") {
    const std::string conninfo = flowreg::pgtest::migrated_database("w_limit");
    const fs::path dir = wprobe_dir("w_limit");

    std::mutex mu;
    std::vector<flowreg::SupervisorEvent> events;
    fd::WorkerOptions options;
    options.name = "limit_test";  // names of this tree, distinct from any other
    options.conninfo = conninfo;
    options.poll_interval = 50ms;
    options.flow_restarts = {5, 60'000ms};
    options.tree_restarts = {1, 60'000ms};
    options.on_event = [&](const flowreg::SupervisorEvent& e) {
      std::lock_guard lock(mu);
      events.push_back(e);
    };
    std::atomic<bool> armed{false};
    options.round_trip_probe = [&armed](const fd::FlowKey& key) -> flowreg::Result<void> {
      if (armed && key.slug == "wprobe_chain")
        return flowreg::make_error(flowreg::Errc::internal, "probe: the chain loop is broken");
      return {};
    };
    const auto source = wprobe_source(dir);
    auto worker = fd::Worker::start(options, source);
    REQUIRE_MESSAGE(worker, flowreg::testing::failure_text(worker));

    // get_or_start: many callers, the running loop is reused.
    std::vector<std::thread> callers;
    std::atomic<int> served{0};
    for (int i = 0; i < 16; ++i)
      callers.emplace_back([&] { served += (*worker)->serve("wprobe_single") ? 1 : 0; });
    for (auto& t : callers) t.join();
    armed = true;  // from now on every round trip of the chain's loop fails

    const auto failure = (*worker)->wait_failure(60s);
    REQUIRE(failure.has_value());
    CHECK(failure->message.find("limit_test") != std::string::npos);
    std::lock_guard lock(mu);
    const auto count = [&](flowreg::SupervisorEventKind kind, const std::string& child) {
      int n = 0;
      for (const auto& e : events)
        if (e.kind == kind && e.child.find(child) != std::string::npos) ++n;
      return n;
    };
    using K = flowreg::SupervisorEventKind;
    // Two lives of limit_test.loops, each restarting the chain loop 5 times before giving up.
    CHECK(count(K::child_restarted, "limit_test.loop:wprobe_chain@") == 10);
    CHECK(count(K::limit_reached, "") >= 2);
    CHECK(count(K::child_restarted, "limit_test.loops") == 1);
    // The single-step loop was never restarted on its own: only with its supervisor.
    CHECK(count(K::child_restarted, "limit_test.loop:wprobe_single@") == 0);
    CHECK(count(K::child_started, "limit_test.loop:wprobe_single@") == 2);
    CHECK(served.load() == 16);
  }
}
