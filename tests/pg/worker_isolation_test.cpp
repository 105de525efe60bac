// Handlers in processes of their own (isolation: process): a real `flowreg worker` serving the
// fixture plugin tests/plugins/wiso.cpp, whose handlers crash, abort, exit, spin, allocate 2 GiB,
// fork, fork without end, write garbage to or close their result channel, and sleep past their
// timeout. Each costs its task only: the other flow's runs started meanwhile complete on their
// first attempt, the worker never exits, and no process the handlers started is left.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/types.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace {

namespace fs = std::filesystem;
namespace fd = flowreg::detail;
using Json = nlohmann::json;
using namespace std::chrono_literals;
using flowreg::pgtest::eventually;
using flowreg::pgtest::query_one_or_empty;
using flowreg::pgtest::read_file;

struct IsolationScene : flowreg::pgtest::WorkerScene {
  // Attempts of `run` that did not complete (lease expiries included).
  std::string attempts(const fd::RunId& run) const {
    return query_one_or_empty(
        conninfo, "SELECT count(*) FROM flowreg.task_attempts WHERE run_id = '" + run + "'");
  }
};

IsolationScene make_scene(const std::string& name) {
  IsolationScene s;
  flowreg::pgtest::prepare_scene(s, name, "wiso.so", "wiso.so");
  std::ofstream(s.config()) << "plugins:\n  dir: plugins\n  watch: false\n"
                            << "database:\n  url: " << Json(s.conninfo).dump()
                            << "\n  data_dir: " << Json((s.dir / "data").string()).dump() << "\n";
  return s;
}

// The pids listed one per line in `file` (absent: none).
std::vector<pid_t> pids_in(const fs::path& file) {
  std::vector<pid_t> out;
  std::ifstream in(file);
  for (long pid = 0; in >> pid;) out.push_back(static_cast<pid_t>(pid));
  return out;
}

// Whether `pid` runs code: alive and not a zombie.
bool running(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno != ESRCH;
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

struct Case {
  std::string how;
  Json extra;
  std::string status;             // of the run
  std::vector<std::string> says;  // in its error (failed) or its output (completed)
  Json ended = nullptr;           // what its attempt's "process" says of the process's end
};

// The one attempt of `run`, as `flowreg runs show --json` lists it.
Json only_attempt(const IsolationScene& s, const fd::RunId& run) {
  const Json shown = Json::parse(s.cli({"runs", "show", run, "--json"}).out, nullptr, false);
  if (!shown.is_object() || !shown["attempts"].is_array() || shown["attempts"].size() != 1)
    return shown;
  return shown["attempts"][0];
}

}  // namespace

TEST_SUITE("worker_isolation") {
  TEST_CASE(
      "isolation process: each way a handler misbehaves costs its task only; the other flow's "
      "runs complete on their first attempt, the worker lives on, and nothing is left running") {
    auto s = make_scene("wi_misbehave");
    auto w = s.worker("w", {"--concurrency", "2", "--lease", "3s"});
    s.wait_serving("w", "wiso_bad");
    s.wait_serving("w", "wiso_quick");
    const std::vector<Case> cases = {
        {"segv",
         {},
         "failed",
         {"crashed its process", "signal 11, SIGSEGV"},
         {{"signal", SIGSEGV}, {"signal_name", "SIGSEGV"}, {"exit_status", nullptr}}},
        {"abort",
         {},
         "failed",
         {"crashed its process", "SIGABRT"},
         {{"signal", SIGABRT}, {"signal_name", "SIGABRT"}}},
        {"exit0",
         {},
         "failed",
         {"exit status 0 during the task"},
         {{"signal", nullptr}, {"exit_status", 0}}},
        {"spin", {}, "failed", {"CPU time limit of 1 s", "SIGXCPU"}},
        {"alloc", {}, "failed", {"bad_alloc", "512 MiB of memory"}},
        {"sleep",
         {{"ms", 20000}},
         "failed",
         {"timed out after 8000 ms", "was killed"},
         {{"signal", SIGKILL}, {"signal_name", "SIGKILL"}}},
        {"garbage", {}, "failed", {"broke its channel to the worker"}},
        {"close", {}, "failed", {"closed or broke its result channel"}},
        {"fork", {}, "completed", {"child"}},
        {"fork_bomb", {}, "completed", {"forked"}},
    };
    std::set<pid_t> handler_pids;
    for (const auto& c : cases) {
      CAPTURE(c.how);
      const fs::path started = s.dir / (c.how + ".started");
      const fs::path children = s.dir / (c.how + ".children");
      Json input = {{"how", c.how}, {"started", started.string()}, {"children", children.string()}};
      for (const auto& [k, v] : c.extra.items()) input[k] = v;
      const auto bad = s.start("wiso_bad", input);
      REQUIRE_MESSAGE(eventually([&] { return fs::exists(started); }, 60s), s.err("w"));
      // Runs of the other flow started while the bad handler runs: each completes on its first
      // attempt (no lease had to expire), in a process of its own.
      std::vector<fd::RunId> quick;
      for (int i = 0; i < 3; ++i) quick.push_back(s.start("wiso_quick", {{"n", i}}));
      for (const auto& r : quick) {
        REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 60s), s.err("w"));
        CHECK(s.run_field(r, "status") == "completed");
        CHECK(s.attempts(r) == "0");
        const Json out = Json::parse(s.run_field(r, "output"));
        CHECK(out["only"]["pid"].get<int>() != w.pid());
        handler_pids.insert(out["only"]["pid"].get<int>());
        // The completed attempt keeps what it cost in its process: the process that ran it.
        const Json attempt = only_attempt(s, r);
        CAPTURE(attempt.dump());
        REQUIRE(attempt.contains("process"));
        REQUIRE(attempt["process"].is_object());
        CHECK(attempt["process"]["pid"] == out["only"]["pid"]);
        CHECK(attempt["process"]["max_rss_kb"].get<std::int64_t>() > 0);
        CHECK(attempt["process"]["signal"].is_null());
        CHECK(attempt["process"]["exit_status"].is_null());
      }
      if (c.how == "segv")
        CHECK(s.cli({"runs", "show", quick.front()}).out.find("    process: pid ") !=
              std::string::npos);
      REQUIRE_MESSAGE(eventually([&] { return s.ended(bad); }, 60s), s.err("w"));
      CHECK(s.run_field(bad, "status") == c.status);
      const std::string said =
          c.status == "failed" ? s.run_field(bad, "error") : s.run_field(bad, "output");
      for (const auto& words : c.says) CHECK_MESSAGE(said.find(words) != std::string::npos, said);
      // Its attempt keeps what it cost in the process that ran it, and how that process ended.
      const Json attempt = only_attempt(s, bad);
      CAPTURE(attempt.dump());
      REQUIRE(attempt.contains("process"));
      REQUIRE(attempt["process"].is_object());
      CHECK(attempt["process"]["pid"].get<int>() > 0);
      CHECK(attempt["process"]["pid"].get<int>() != w.pid());
      const auto ran = pids_in(started);
      if (!ran.empty()) CHECK(attempt["process"]["pid"].get<int>() == ran.front());
      if (c.ended.is_object())
        for (const auto& [key, value] : c.ended.items()) CHECK(attempt["process"][key] == value);
      if (c.how == "spin") CHECK(attempt["process"]["cpu_us"].get<std::int64_t>() >= 900'000);
      // The worker lives on.
      CHECK_MESSAGE(!w.wait(0ms).has_value(), s.err("w"));
      for (const pid_t pid : pids_in(started)) handler_pids.insert(pid);
      // What the handler forked is gone once its task ended.
      for (const pid_t pid : pids_in(children)) {
        CAPTURE(pid);
        CHECK(eventually([&] { return !running(pid); }, 10s));
      }
      if (c.how == "fork_bomb") {
        // limits.processes is 64: RLIMIT_NPROC for a user, a pids cgroup of the handler process
        // for root (its own two tasks count: the process and its watch); where root cannot make
        // one, the worker says so and only the fixture's own cap of 300 holds.
        const int forked = Json::parse(said)["only"]["forked"].get<int>();
        if (s.err("w").find("limits.processes (64) is not enforced") == std::string::npos)
          CHECK(forked < 64);
        else
          CHECK(forked == 300);
        CHECK(pids_in(children).size() >= 2);
      }
    }
    CHECK(s.err("w").find("left 1 process(es) running; they were killed") != std::string::npos);

    // The worker's heartbeat carries its pool's state: `flowreg workers` (and the API, the
    // dashboard) show how its processes ended. segv, abort, exit0: crashed; spin: a limit
    // (SIGXCPU); sleep: timed out; garbage, close: broken.
    Json processes;
    const bool counted = eventually(
        [&] {
          const auto listed = s.cli({"workers", "--json"});
          const Json workers = Json::parse(listed.out, nullptr, false);
          if (!workers.is_array()) return false;
          for (const auto& worker : workers)
            if (worker.value("id", "") == "w") processes = worker["handler_processes"];
          return processes.is_object() && processes.value("broken", 0) >= 2;
        },
        30s);
    REQUIRE_MESSAGE(counted, processes.dump());
    CHECK(processes["crashed"] == 3);
    CHECK(processes["killed_by_limit"] == 1);
    CHECK(processes["timed_out"] == 1);
    CHECK(processes["broken"] == 2);
    CHECK(processes["alive"].get<int>() >= 1);
    CHECK(processes["started"].get<int>() >= 8);
    CHECK(s.cli({"workers"}).out.find("handler processes: ") != std::string::npos);

    // A clean stop ends every handler process.
    w.signal(SIGTERM);
    CHECK(w.wait(60s) == 0);
    CHECK(handler_pids.size() >= 2);
    // Nor is a pids cgroup of its handler processes left (where root made them).
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/sys/fs/cgroup/pids/flowreg", ec))
      CHECK(entry.path().filename().string().rfind(std::to_string(w.pid()) + "-", 0) ==
            std::string::npos);
    for (const pid_t pid : handler_pids) {
      CAPTURE(pid);
      CHECK(eventually([&] { return !running(pid); }, 10s));
    }
  }

  TEST_CASE(
      "isolation process: tasks written to a handler process together: one among them that "
      "crashes, breaks its channel or hangs costs its task only, and the tasks behind it run in a "
      "fresh process") {
    auto s = make_scene("wi_ahead");
    s.log_level = "debug";  // for the line that says how many tasks went together
    auto w = s.worker("w", {"--concurrency", "1"});
    s.wait_serving("w", "wiso_bad");
    const auto together = [&] {
      const std::string log = s.err("w");
      std::size_t n = 0;
      for (auto at = log.find("tasks written to it at once"); at != std::string::npos;
           at = log.find("tasks written to it at once", at + 1))
        ++n;
      return n;
    };
    // A pool's tasks are written ahead once its handlers have run quickly: one run first.
    const auto warm = s.start("wiso_bad", {{"how", "none"}});
    REQUIRE_MESSAGE(eventually([&] { return s.ended(warm); }, 60s), s.err("w"));
    CHECK(s.run_field(warm, "status") == "completed");
    // The timeout last: after one, the pool's tasks go one at a time for a while.
    const std::vector<Case> cases = {
        {"segv", {}, "failed", {"crashed its process", "SIGSEGV"}},
        {"garbage", {}, "failed", {"broke its channel to the worker"}},
        {"sleep", {{"ms", 20000}}, "failed", {"timed out after 8000 ms", "was killed"}},
    };
    for (const auto& c : cases) {
      CAPTURE(c.how);
      const fs::path started = s.dir / (c.how + ".started");
      Json bad = {{"how", c.how}, {"started", started.string()}};
      for (const auto& [k, v] : c.extra.items()) bad[k] = v;
      // Started in one transaction: one claim takes them all, the bad one in the middle. A batch
      // goes one task at a time when the pool is not quick (a busy machine preempted its quick
      // handlers three times in a row): then another batch, at most three in all. Every batch's
      // outcome is checked.
      std::vector<Json> inputs(3, Json{{"how", "none"}});
      inputs.push_back(bad);
      inputs.insert(inputs.end(), 3, Json{{"how", "none"}});
      bool written_together = false;
      for (int batch = 0; batch < 3 && !written_together; ++batch) {
        CAPTURE(batch);
        const std::size_t together_before = together();
        const auto runs = s.start_many("wiso_bad", inputs);
        for (const auto& r : runs)
          REQUIRE_MESSAGE(eventually([&] { return s.ended(r); }, 60s), s.err("w"));
        for (std::size_t i = 0; i < runs.size(); ++i) {
          CAPTURE(i);
          if (i == 3) {
            CHECK(s.run_field(runs[i], "status") == c.status);
            const std::string error = s.run_field(runs[i], "error");
            for (const auto& words : c.says)
              CHECK_MESSAGE(error.find(words) != std::string::npos, error);
          } else {
            // The others complete on their first attempt: none was blamed for the bad one.
            CHECK(s.run_field(runs[i], "status") == "completed");
            CHECK(s.attempts(runs[i]) == "0");
          }
        }
        // The seven went to one process together (one line), and the three behind the bad one
        // to a fresh process (one more).
        written_together = together() >= together_before + 2;
        CHECK_MESSAGE(!w.wait(0ms).has_value(), s.err("w"));
      }
      CHECK_MESSAGE(written_together, s.err("w"));
      const auto bad_pids = pids_in(started);
      REQUIRE(!bad_pids.empty());
      for (const pid_t pid : bad_pids) {
        CAPTURE(pid);
        CHECK(eventually([&] { return !running(pid); }, 10s));
      }
    }
    w.signal(SIGTERM);
    CHECK(w.wait(60s) == 0);
  }

  TEST_CASE(
      "isolation process: a plugin whose handlers crash their processes 5 times within a minute "
      "is quarantined, as one that crashes while it loads; the worker lives on") {
    auto s = make_scene("wi_crash_loop");
    auto w = s.worker("w", {"--concurrency", "1"});
    s.wait_serving("w", "wiso_bad");
    for (int i = 0; i < 5; ++i) {
      const auto run = s.start("wiso_bad", {{"how", "segv"}});
      REQUIRE_MESSAGE(eventually([&] { return s.ended(run); }, 60s), s.err("w"));
      CHECK(s.run_field(run, "error").find("SIGSEGV") != std::string::npos);
    }
    REQUIRE_MESSAGE(eventually(
                        [&] {
                          return s.err("w").find("quarantined, module 'wiso' unregistered") !=
                                 std::string::npos;
                        },
                        30s),
                    s.err("w"));
    CHECK(s.err("w").find("crashed their processes 5 times within 60 s") != std::string::npos);
    // Another process of this configuration sees the quarantine (the plugin cache's record).
    const auto listed = flowreg::test::run_process(
        {FLOWREG_BINARY, "--config", s.config().string(), "plugins", "list", "--json"});
    const Json plugins = Json::parse(listed.out);
    REQUIRE(plugins.size() == 1);
    CHECK(plugins[0]["status"] == "quarantined");
    CHECK(plugins[0].dump().find("crashed their processes 5 times") != std::string::npos);
    // The worker serves its flows no more, and lives on.
    const auto later = s.start("wiso_quick", {{"n", 1}});
    const auto flows_of_w = [&] {
      return query_one_or_empty(s.conninfo,
                                "SELECT jsonb_array_length(flows) FROM flowreg.workers "
                                "WHERE id = 'w'");
    };
    REQUIRE_MESSAGE(eventually([&] { return flows_of_w() == "0"; }, 30s), s.err("w"));
    CHECK(!w.wait(0ms).has_value());
    CHECK(s.run_field(later, "status") == "started");
    CHECK(query_one_or_empty(s.conninfo, "SELECT status FROM flowreg.tasks WHERE run_id = '" +
                                             later + "'") == "queued");
    w.signal(SIGTERM);
    CHECK(w.wait(60s) == 0);
  }

  TEST_CASE(
      "isolation process: what a handler prints goes to the worker's log, tagged with its flow, "
      "run and task, and bounded per task") {
    auto s = make_scene("wi_print");
    auto w = s.worker("w", {"--concurrency", "1"});
    s.wait_serving("w", "wiso_bad");
    const auto run = s.start("wiso_bad", {{"how", "print"}, {"lines", 2}});
    REQUIRE_MESSAGE(eventually([&] { return s.ended(run); }, 60s), s.err("w"));
    CHECK(s.run_field(run, "status") == "completed");
    const std::string tag = "handler output [flow wiso_bad step only run " + run;
    REQUIRE_MESSAGE(
        eventually([&] { return s.err("w").find("err line 1") != std::string::npos; }, 10s),
        s.err("w"));
    const std::string log = s.err("w");
    for (const std::string line : {"out line 0", "out line 1", "err line 0", "err line 1"}) {
      CAPTURE(line);
      const auto at = log.find(line);
      REQUIRE(at != std::string::npos);
      const auto start = log.rfind('\n', at);
      CHECK(log.substr(start + 1, at - start - 1).find(tag) != std::string::npos);
    }
    // 100,000 lines are far over the 64 KiB kept per task: the rest is counted, not logged.
    const auto loud = s.start("wiso_bad", {{"how", "print"}, {"lines", 100000}});
    REQUIRE_MESSAGE(eventually([&] { return s.ended(loud); }, 60s), s.err("w"));
    CHECK(s.run_field(loud, "status") == "completed");
    REQUIRE(eventually([&] { return s.err("w").find("more bytes dropped") != std::string::npos; },
                       10s));
    CHECK(s.err("w").find("err line 99999") == std::string::npos);
    w.signal(SIGTERM);
    CHECK(w.wait(60s) == 0);
  }

  TEST_CASE(
      "isolation process: a worker killed with SIGKILL takes its handler processes with it, and "
      "the task runs again elsewhere") {
    auto s = make_scene("wi_kill");
    auto a = s.worker("a", {"--lease", "1s"});
    s.wait_serving("a", "wiso_quick");
    const fs::path started = s.dir / "sleep.started";
    const auto run =
        s.start("wiso_bad", {{"how", "sleep"}, {"ms", 1500}, {"started", started.string()}});
    REQUIRE_MESSAGE(eventually([&] { return fs::exists(started); }, 60s), s.err("a"));
    const auto first = pids_in(started);
    REQUIRE(first.size() == 1);
    a.signal(SIGKILL);
    CHECK(a.wait(10s) == 128 + SIGKILL);
    // The handler process (its whole group) dies with its worker: its channel closed.
    CHECK(eventually([&] { return !running(first[0]); }, 10s));
    auto b = s.worker("b", {"--lease", "1s"});
    REQUIRE_MESSAGE(eventually([&] { return s.ended(run); }, 60s), s.err("b"));
    // wiso_bad has one attempt: the one that died with a used it (its lease expired).
    CHECK(s.run_field(run, "status") == "failed");
    CHECK(
        query_one_or_empty(s.conninfo,
                           "SELECT string_agg(attempt || ' ' || worker_id || ' ' || outcome, ', ') "
                           "FROM flowreg.task_attempts WHERE run_id = '" +
                               run + "'") == "1 a lease_expired");
    b.signal(SIGTERM);
    CHECK(b.wait(60s) == 0);
  }
}
