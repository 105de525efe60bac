// `flowreg worker` against handlers and machines that misbehave: real worker processes serving the
// fixture plugins tests/plugins/wchaos.cpp (a handler that crashes the worker, one that never
// returns, one with a huge output) and tests/plugins/wtext.cpp (output text nested 100,000 levels
// deep, NUL characters in outputs and errors), workers killed with SIGKILL, and an embedded cluster
// whose postmaster is killed.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/embedded_cluster.hpp"
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
using flowreg::pgtest::query_one_or_empty;
using flowreg::pgtest::read_file;

void open_up(const fs::path& dir) {
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                           fs::perms::others_read | fs::perms::others_exec);
}

// A scratch directory with plugins/wchaos.so, plugins/wtext.so and a configuration: on a fresh
// database of the shared cluster, or (embedded = true) with no URL, so that the worker starts and
// owns an embedded cluster under <dir>/data.
struct Scene : flowreg::pgtest::WorkerScene {
  Json workers() const {
    const auto listed = flowreg::test::run_process(
        {FLOWREG_BINARY, "--config", config().string(), "workers", "--json"});
    REQUIRE_MESSAGE(listed.exit_code == 0, listed.err);
    return Json::parse(listed.out);
  }
  // Tasks worker `id` holds (started, not ended).
  int count_held_by(const std::string& id) const {
    return std::stoi(
        query_one_or_empty(conninfo,
                           "SELECT count(*) FROM flowreg.tasks WHERE status = 'started' AND "
                           "worker_id = '" +
                               id + "'"));
  }
  std::string worker_status(const std::string& id) const {
    for (const auto& w : workers())
      if (w["id"] == id) return w["status"].get<std::string>();
    return "";
  }
};

Scene make_scene(const std::string& name, bool embedded = false) {
  Scene s;
  s.dir = flowreg::pgtest::test_root() / name;
  fs::remove_all(s.dir);
  fs::create_directories(s.dir / "plugins");
  for (const auto& d : {flowreg::pgtest::test_root(), s.dir, s.dir / "plugins"}) open_up(d);
  for (const char* plugin : {"wchaos.so", "wtext.so"}) {
    fs::copy_file(fs::path(FLOWREG_FIXTURE_DIR) / plugin, s.dir / "plugins" / plugin);
    fs::permissions(s.dir / "plugins" / plugin, fs::perms::owner_read | fs::perms::owner_write |
                                                    fs::perms::group_read | fs::perms::others_read);
  }
  std::ofstream config(s.config());
  config << "plugins:\n  dir: plugins\n  watch: false\ndatabase:\n";
  if (!embedded) {
    s.conninfo = flowreg::pgtest::migrated_database(name);
    config << "  url: " << Json(s.conninfo).dump() << "\n";
  }
  config << "  data_dir: " << Json((s.dir / "data").string()).dump() << "\n";
  return s;
}

}  // namespace

TEST_SUITE("worker_faults") {
  TEST_CASE(
      "a handler that crashes its worker fails its task with the signal, not 'lease expired', "
      "and the restarted worker serves other runs") {
    for (const auto& [how, sig] :
         {std::pair<std::string, int>{"segv", SIGSEGV}, {"abort", SIGABRT}}) {
      CAPTURE(how);
      auto s = make_scene("wf_crash_" + how);
      auto a = s.worker("a", {"--lease", "2s"});
      s.wait_serving("a", "wchaos_crash");
      const auto crashed = s.start("wchaos_crash", {{"how", how}});
      CHECK(a.wait(60s) == 128 + sig);

      auto b = s.worker("b", {"--lease", "2s"});
      REQUIRE_MESSAGE(eventually([&] { return s.ended(crashed); }, 60s), s.err("b"));
      CHECK(s.run_field(crashed, "status") == "failed");
      CHECK(s.run_field(crashed, "error")
                .find("handler crashed the worker (signal " + std::to_string(sig) + ")") !=
            std::string::npos);
      // Failed on the attempt that crashed: it never ran again (its task has left the queue; its
      // step counts its attempts).
      CHECK(query_one_or_empty(s.conninfo, "SELECT attempts FROM flowreg.steps WHERE run_id = '" +
                                               crashed + "'") == "1");
      const auto other = s.start("wchaos_quick", {{"n", 1}});
      REQUIRE_MESSAGE(eventually([&] { return s.ended(other); }, 60s), s.err("b"));
      CHECK(s.run_field(other, "status") == "completed");
      CHECK(b.wait(0ms) == std::nullopt);
      // The dead worker's journal was reported and removed; b's own is there while it runs.
      std::vector<fs::path> journals;
      for (const auto& e : fs::directory_iterator(s.dir / "data" / "workers"))
        journals.push_back(e.path());
      CHECK(journals.size() == 1);
      b.signal(SIGTERM);
      CHECK(b.wait(30s) == 0);
      CHECK(fs::is_empty(s.dir / "data" / "workers"));  // a clean stop leaves no journal
    }
  }

  TEST_CASE(
      "a task running in workers killed with SIGKILL (no signal to blame) fails after 3 such "
      "deaths, with attempts left") {
    auto s = make_scene("wf_strikes");
    const fs::path started = s.dir / "started";
    fd::RunId run;
    for (int death = 1; death <= 3; ++death) {
      CAPTURE(death);
      fs::remove(started);
      auto w = s.worker("w" + std::to_string(death), {"--lease", "1s"});
      s.wait_serving("w" + std::to_string(death), "wchaos_slow");
      if (death == 1) run = s.start("wchaos_slow", {{"started", started.string()}});
      REQUIRE_MESSAGE(eventually([&] { return fs::exists(started); }, 60s),
                      s.err("w" + std::to_string(death)));
      w.signal(SIGKILL);
      CHECK(w.wait(10s) == 128 + SIGKILL);
      CHECK(!s.ended(run));
    }
    auto last = s.worker("last");
    REQUIRE_MESSAGE(eventually([&] { return s.ended(run); }, 60s), s.err("last"));
    CHECK(s.run_field(run, "status") == "failed");
    CHECK(s.run_field(run, "error").find("handler was running in 3 workers that died") !=
          std::string::npos);
    // Three attempts, each in a worker that died (the count is in the error above); the task has
    // left the queue.
    CHECK(query_one_or_empty(s.conninfo,
                             "SELECT attempts || ' ' || (SELECT count(*) FROM flowreg.tasks t "
                             "WHERE t.run_id = s.run_id) FROM flowreg.steps s WHERE "
                             "run_id = '" +
                                 run + "'") == "3 0");
    // Each attempt is kept (migration 0019): the first two ended when their leases expired and a
    // new worker's claim queued the task again; the third failed the task as a crash, reported by
    // the last worker from its predecessor's journal.
    CHECK(query_one_or_empty(s.conninfo,
                             "SELECT string_agg(attempt || ' ' || worker_id || ' ' || outcome, "
                             "', ' ORDER BY attempt) FROM flowreg.task_attempts WHERE run_id = '" +
                                 run + "'") ==
          "1 w1 lease_expired, 2 w2 lease_expired, 3 w3 crashed");
    last.signal(SIGTERM);
    CHECK(last.wait(30s) == 0);
  }

  TEST_CASE(
      "a handler that never returns does not starve other flows: its thread is replaced, its flow "
      "claims no more once its handlers that timed out hold its share of threads, and the stuck "
      "tasks fail at their timeout") {
    auto s = make_scene("wf_hang");
    auto a = s.worker("a", {"--concurrency", "2", "--heartbeat-interval", "500ms"});
    s.wait_serving("a", "wchaos_hang");
    const fs::path first_started = s.dir / "hang1";
    const auto hang1 = s.start("wchaos_hang", {{"started", first_started.string()}});
    REQUIRE(eventually([&] { return fs::exists(first_started); }, 30s));

    // One thread stuck, one free: runs of another flow still complete here.
    std::vector<fd::RunId> quick;
    for (int i = 0; i < 5; ++i) quick.push_back(s.start("wchaos_quick", {{"n", i}}));
    for (const auto& r : quick) {
      REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 60s), s.err("a"));
      CHECK(s.run_field(r, "status") == "completed");
    }
    REQUIRE(eventually([&] { return s.ended(hang1); }, 30s));
    CHECK(s.run_field(hang1, "status") == "failed");
    CHECK(s.run_field(hang1, "error").find("timed out") != std::string::npos);
    REQUIRE_MESSAGE(eventually(
                        [&] {
                          return s.err("a").find("a replacement thread runs handlers meanwhile") !=
                                 std::string::npos;
                        },
                        30s),
                    s.err("a"));

    // Its flow's share of a's threads is max(1, 2 threads / the flow versions a serves) = 1, held
    // by the handler that never returned: a claims no more of its tasks, and runs the others.
    const fs::path second_started = s.dir / "hang2";
    const auto hang2 = s.start("wchaos_hang", {{"started", second_started.string()}});
    std::vector<fd::RunId> later;
    for (int i = 0; i < 3; ++i) later.push_back(s.start("wchaos_quick", {{"n", 10 + i}}));
    for (const auto& r : later) {
      REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 60s), s.err("a"));
      CHECK(s.run_field(r, "status") == "completed");
      CHECK(query_one_or_empty(s.conninfo, "SELECT worker_id FROM flowreg.steps WHERE run_id = '" +
                                               r + "'") == "a");
    }
    // Positive signal instead of a sleep: two heartbeats of a since hang2 was queued, each saying
    // it runs (not stuck); a polls every 200 ms meanwhile, and leaves hang2 in the queue.
    const auto beat = [&] {
      return query_one_or_empty(s.conninfo,
                                "SELECT last_heartbeat_at FROM flowreg.workers WHERE id = 'a'");
    };
    for (int round = 0; round < 2; ++round) {
      const std::string seen = beat();
      REQUIRE_MESSAGE(eventually([&] { return beat() != seen; }, 30s), s.err("a"));
      CHECK(s.worker_status("a") == "running");
    }
    CHECK(query_one_or_empty(s.conninfo,
                             "SELECT coalesce(worker_id, '-') FROM flowreg.tasks WHERE run_id = '" +
                                 hang2 + "'") == "-");
    CHECK(!fs::exists(second_started));

    // Another worker takes it.
    auto b = s.worker("b");
    REQUIRE_MESSAGE(eventually([&] { return s.ended(hang2); }, 60s), s.err("b"));
    CHECK(fs::exists(second_started));
    CHECK(s.run_field(hang2, "status") == "failed");
    CHECK(s.run_field(hang2, "error").find("timed out") != std::string::npos);
    CHECK(query_one_or_empty(s.conninfo, "SELECT worker_id FROM flowreg.steps WHERE run_id = '" +
                                             hang2 + "'") == "b");
    CHECK(s.count_held_by("a") == 0);
    b.signal(SIGTERM);
    CHECK(b.wait(30s) == 0);
    // Its drain does not wait for the handler that never returns (its task failed already).
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE(
      "issue 49: two attempts of a handler that never returns held both threads of a worker with "
      "concurrency 2, which then claimed nothing, forever: a run of another flow started then "
      "completes within seconds on a replacement thread") {
    auto s = make_scene("wf_hang_two");
    auto a = s.worker("a", {"--concurrency", "2", "--heartbeat-interval", "500ms"});
    s.wait_serving("a", "wchaos_hang");
    const fs::path started1 = s.dir / "hang1", started2 = s.dir / "hang2";
    const auto hang1 = s.start("wchaos_hang", {{"started", started1.string()}});
    const auto hang2 = s.start("wchaos_hang", {{"started", started2.string()}});
    REQUIRE_MESSAGE(eventually([&] { return fs::exists(started1) && fs::exists(started2); }, 30s),
                    s.err("a"));
    // Both time out (1 s) and keep their threads: their handlers never return.
    for (const auto& r : {hang1, hang2}) {
      REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 30s), s.err("a"));
      CHECK(s.run_field(r, "status") == "failed");
      CHECK(s.run_field(r, "error").find("timed out") != std::string::npos);
    }
    const auto quick = s.start("wchaos_quick", {{"n", 1}});
    REQUIRE_MESSAGE(eventually([&] { return s.ended(quick); }, 5s), s.err("a"));
    CHECK(s.run_field(quick, "status") == "completed");
    CHECK(query_one_or_empty(s.conninfo, "SELECT worker_id FROM flowreg.steps WHERE run_id = '" +
                                             quick + "'") == "a");
    // The same process, running: its two handlers are still in their loops.
    CHECK(a.wait(0ms) == std::nullopt);
    CHECK(s.worker_status("a") == "running");
    const std::string err = s.err("a");
    std::size_t replaced = 0;
    for (auto at = err.find("a replacement thread runs handlers meanwhile");
         at != std::string::npos;
         at = err.find("a replacement thread runs handlers meanwhile", at + 1))
      ++replaced;
    CHECK(replaced == 2);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE(
      "a worker whose every flow holds its share of threads with handlers that never return "
      "replaces itself: with --no-reexec it drains and exits with status 75; else it re-executes "
      "itself (same pid) and serves again") {
    auto s = make_scene("wf_replace");
    // Served alone, the flow's share is every thread: one, at concurrency 1.
    auto a = s.worker("a", {"--concurrency", "1", "--flows", "wchaos_hang", "--no-reexec",
                            "--heartbeat-interval", "500ms"});
    s.wait_serving("a", "wchaos_hang");
    const fs::path started1 = s.dir / "hang1";
    const auto hang1 = s.start("wchaos_hang", {{"started", started1.string()}});
    REQUIRE_MESSAGE(eventually([&] { return fs::exists(started1); }, 30s), s.err("a"));
    CHECK(a.wait(60s) == 75);
    const std::string err = s.err("a");
    CHECK(err.find("replacing itself: each of the 1 flow version(s) it serves holds its share of "
                   "1 handler thread(s)") != std::string::npos);
    CHECK(err.find("exiting with status 75") != std::string::npos);
    CHECK(err.find("re-executing") == std::string::npos);
    // Its drain recorded the timed-out task's failure.
    CHECK(s.run_field(hang1, "status") == "failed");
    CHECK(s.run_field(hang1, "error").find("timed out") != std::string::npos);
    CHECK(s.worker_status("a") == "stopped");
    CHECK(s.count_held_by("a") == 0);

    auto b = s.worker(
        "b", {"--concurrency", "1", "--flows", "wchaos_hang", "--heartbeat-interval", "500ms"});
    s.wait_serving("b", "wchaos_hang");
    const auto servings = [&] {
      const std::string text = s.err("b");
      int n = 0;
      for (auto at = text.find(": serving "); at != std::string::npos;
           at = text.find(": serving ", at + 1))
        ++n;
      return n;
    };
    REQUIRE(servings() == 1);
    const fs::path started2 = s.dir / "hang2";
    const auto hang2 = s.start("wchaos_hang", {{"started", started2.string()}});
    REQUIRE_MESSAGE(eventually([&] { return servings() == 2; }, 60s), s.err("b"));
    CHECK(s.err("b").find("re-executing itself (pid " + std::to_string(b.pid()) + ")") !=
          std::string::npos);
    CHECK(b.wait(0ms) == std::nullopt);
    CHECK(s.run_field(hang2, "status") == "failed");
    REQUIRE_MESSAGE(eventually([&] { return s.worker_status("b") == "running"; }, 30s), s.err("b"));
    // The new image claims and runs the flow's tasks again (and replaces itself again).
    const fs::path started3 = s.dir / "hang3";
    const auto hang3 = s.start("wchaos_hang", {{"started", started3.string()}});
    REQUIRE_MESSAGE(eventually([&] { return fs::exists(started3); }, 30s), s.err("b"));
    REQUIRE_MESSAGE(eventually([&] { return servings() == 3; }, 60s), s.err("b"));
    CHECK(s.run_field(hang3, "status") == "failed");
    b.signal(SIGTERM);
    CHECK(b.wait(30s) == 0);
  }

  TEST_CASE(
      "a handler output over max_output_bytes fails its task permanently naming the limit; a "
      "large one under it completes, and the other tasks of the batch are unaffected") {
    auto s = make_scene("wf_big");
    auto a = s.worker("a", {"--max-output", "10MB", "--lease", "2s"});
    s.wait_serving("a", "wchaos_big");
    const auto over = s.start("wchaos_big", {{"bytes", 12'000'000}});
    std::vector<fd::RunId> under, quick;
    for (int i = 0; i < 3; ++i) under.push_back(s.start("wchaos_big", {{"bytes", 8'000'000}}));
    for (int i = 0; i < 3; ++i) quick.push_back(s.start("wchaos_quick", {{"n", i}}));
    REQUIRE_MESSAGE(eventually([&] { return s.ended(over); }, 120s), s.err("a"));
    CHECK(s.run_field(over, "status") == "failed");
    const std::string error = s.run_field(over, "error");
    CHECK(error.find("failed permanently on attempt 1") != std::string::npos);
    CHECK(error.find("over the limit of 10000000 bytes (worker.max_output_bytes") !=
          std::string::npos);
    for (const auto& r : under) {
      REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 120s), s.err("a"));
      CHECK(s.run_field(r, "status") == "completed");
      CHECK(s.run_field(r, "length(output->'only'->>'data')") == "8000000");
    }
    for (const auto& r : quick) {
      REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 60s), s.err("a"));
      CHECK(s.run_field(r, "status") == "completed");
    }
    CHECK(s.count_held_by("a") == 0);
    CHECK(s.err("a").find("lease") == std::string::npos);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE(
      "a handler output nested 100,000 levels deep crashed the worker after its task was no "
      "longer journaled: it now fails that task permanently naming the 64-level limit, and the "
      "worker keeps serving other runs") {
    auto s = make_scene("wf_deep");
    auto a = s.worker("a");
    s.wait_serving("a", "wtext_deep");
    const auto deep = s.start("wtext_deep", Json::object());
    REQUIRE_MESSAGE(eventually([&] { return s.ended(deep); }, 60s), s.err("a"));
    CHECK(s.run_field(deep, "status") == "failed");
    CHECK(s.run_field(deep, "error").find("returned output nested deeper than 64 levels") !=
          std::string::npos);
    const auto other = s.start("wtext_quick", Json::object());
    REQUIRE_MESSAGE(eventually([&] { return s.ended(other); }, 60s), s.err("a"));
    CHECK(s.run_field(other, "status") == "completed");
    CHECK(a.wait(0ms) == std::nullopt);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE(
      "a NUL character in a handler's output strings, keys or error message made PostgreSQL refuse "
      "the whole recorded batch: it is now U+FFFD, and the other tasks of the batch complete") {
    auto s = make_scene("wf_nul");
    {
      // Registers the flows, then stops: the runs below wait for one worker to claim them together.
      // Each flow's version is stored by its own loop: wait for all three (under load, the worker
      // could be stopped after storing the first and before the others, and start() found none).
      auto first = s.worker("first");
      for (const char* slug : {"wtext_nul", "wtext_nul_error", "wtext_quick"})
        s.wait_serving("first", slug);
      first.signal(SIGTERM);
      REQUIRE(first.wait(30s) == 0);
    }
    const auto nul = s.start("wtext_nul", Json::object());
    const auto nul_error = s.start("wtext_nul_error", Json::object());
    std::vector<fd::RunId> quick;
    for (int i = 0; i < 4; ++i) quick.push_back(s.start("wtext_quick", Json::object()));
    auto a = s.worker("a");
    for (const auto& r : quick) {
      REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 60s), s.err("a"));
      CHECK(s.run_field(r, "status") == "completed");
    }
    REQUIRE_MESSAGE(eventually([&] { return s.ended(nul); }, 60s), s.err("a"));
    CHECK(s.run_field(nul, "status") == "completed");
    CHECK(s.run_field(nul, "output->'only'->>'a'") == "x\xEF\xBF\xBDy");
    CHECK(s.run_field(nul, "output->'only' ? 'k\xEF\xBF\xBD'") == "t");
    REQUIRE_MESSAGE(eventually([&] { return s.ended(nul_error); }, 60s), s.err("a"));
    CHECK(s.run_field(nul_error, "status") == "failed");
    CHECK(s.run_field(nul_error, "error")
              .find("bad\xEF\xBF\xBD"
                    "byte") != std::string::npos);
    CHECK(s.err("a").find("22P05") == std::string::npos);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE("workers: a worker killed with SIGKILL is listed as stale, not running forever") {
    auto s = make_scene("wf_stale");
    // a is stale 600 ms after its death; b, alive, is stale only if it misses beats for 30 s (a
    // short interval for b too would fail this test whenever a loaded machine delays one beat).
    auto a = s.worker("a", {"--heartbeat-interval", "200ms"});
    auto b = s.worker("b", {"--heartbeat-interval", "10s"});
    s.wait_serving("a", "wchaos_quick");
    s.wait_serving("b", "wchaos_quick");
    REQUIRE(eventually([&] { return s.worker_status("a") == "running"; }, 30s));
    a.signal(SIGKILL);
    CHECK(a.wait(10s) == 128 + SIGKILL);
    REQUIRE(eventually([&] { return s.worker_status("a") == "stale"; }, 30s));
    CHECK(s.worker_status("b") == "running");
    const auto listed =
        flowreg::test::run_process({FLOWREG_BINARY, "--config", s.config().string(), "workers"});
    CHECK(listed.out.find("a  stale  heartbeat") != std::string::npos);
    CHECK(listed.out.find("b  running  heartbeat") != std::string::npos);
    b.signal(SIGTERM);
    CHECK(b.wait(30s) == 0);
    CHECK(s.worker_status("b") == "stopped");
  }

  TEST_CASE(
      "the embedded cluster's postmaster killed with SIGKILL: the worker that uses it starts it "
      "again, and runs started afterwards complete without any manual step") {
    auto s = make_scene("wf_revive", /*embedded=*/true);
    {
      auto cluster = fd::EmbeddedCluster::open(s.dir / "data");
      REQUIRE_MESSAGE(cluster, flowreg::testing::failure_text(cluster));
      flowreg::pgtest::track(*cluster);  // stopped at exit
      s.conninfo = cluster->connection_string();
    }
    auto a = s.worker("a", {"--heartbeat-interval", "500ms"});
    s.wait_serving("a", "wchaos_quick");
    const auto before = s.start("wchaos_quick", {{"n", 1}});
    REQUIRE_MESSAGE(eventually([&] { return s.ended(before); }, 60s), s.err("a"));

    auto cluster = fd::EmbeddedCluster::open(s.dir / "data");
    REQUIRE(cluster);
    auto status = cluster->status();
    REQUIRE_MESSAGE(status, flowreg::testing::failure_text(status));
    REQUIRE(status->running);
    const pid_t postmaster = status->postmaster_pid;
    REQUIRE(::kill(postmaster, SIGKILL) == 0);
    // Nobody here starts it: the worker does.
    REQUIRE_MESSAGE(eventually(
                        [&] {
                          auto now = cluster->status();
                          return now && now->running && now->postmaster_pid != postmaster &&
                                 query_one_or_empty(s.conninfo, "SELECT 1") == "1";
                        },
                        120s),
                    s.err("a"));
    const auto after = s.start("wchaos_quick", {{"n", 2}});
    REQUIRE_MESSAGE(eventually([&] { return s.ended(after); }, 60s), s.err("a"));
    CHECK(s.run_field(after, "status") == "completed");
    CHECK(a.wait(0ms) == std::nullopt);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }
}
