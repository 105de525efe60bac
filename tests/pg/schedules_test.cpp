// Schedules on the embedded cluster: one run per tick across several real `flowreg worker`
// processes (a SIGKILL and a restart among them), the catch-up and overlap policies through the
// store, and the file's schedules stored and removed as the file changes.

#include "app/schedules.hpp"

#include <date/date.h>
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <signal.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "pg_fixture.hpp"
#include "schedule/scheduler.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"
#include "worker_scene.hpp"

namespace fs = std::filesystem;
namespace fd = flowreg::detail;
using namespace std::chrono_literals;
using flowreg::pgtest::eventually;
using flowreg::pgtest::query_one;
using flowreg::test::Child;
using ScheduleJson = nlohmann::json;

namespace {

using Clock = std::chrono::system_clock;

struct ScheduleScene : flowreg::pgtest::WorkerScene {
  fd::RunStore store() const {
    auto s = fd::RunStore::connect(conninfo);
    REQUIRE_MESSAGE(s, flowreg::testing::failure_text(s));
    return std::move(*s);
  }
  int count(const std::string& where) const {
    return std::stoi(query_one(conninfo, "SELECT count(*) FROM flowreg." + where));
  }
  // The configuration: the wprobe plugin, this database, and `schedules` (YAML text, indented).
  void write_config(const std::string& schedules) const {
    std::ofstream(config()) << "plugins:\n  dir: plugins\n  watch: true\n"
                            << "database:\n  url: " << ScheduleJson(conninfo).dump()
                            << "\n  data_dir: " << ScheduleJson((dir / "data").string()).dump()
                            << "\n"
                            << schedules;
  }
};

ScheduleScene schedule_scene(const std::string& name) {
  ScheduleScene s;
  flowreg::pgtest::prepare_scene(s, name, "wprobe_v1.so", "wprobe.so");
  return s;
}

// The ticks (as their RFC 3339 text) of the runs a schedule started, in order.
std::vector<std::string> ticks_of(const ScheduleScene& s, const std::string& schedule) {
  const std::string all =
      query_one(s.conninfo,
                "SELECT string_agg(input->>'scheduled_at', ' ' ORDER BY input->>'scheduled_at') "
                "FROM flowreg.runs WHERE idempotency_key LIKE 'schedule:" +
                    schedule + ":%'");
  std::vector<std::string> out;
  std::istringstream in(all);
  for (std::string t; in >> t;) out.push_back(t);
  return out;
}

}  // namespace

TEST_SUITE("schedules") {
  TEST_CASE(
      "three workers fire a schedule of every second: each tick starts exactly one run, "
      "through a SIGKILL and a restart") {
    auto s = schedule_scene("sched_three");
    s.write_config(
        "schedules:\n"
        "  - {name: tick, flow: wprobe_single, cron: \"* * * * * *\", catch_up: all}\n");
    std::vector<Child> workers;
    for (const char* id : {"a", "b", "c"}) workers.push_back(s.worker(id));
    for (const char* id : {"a", "b", "c"}) (void)s.wait_serving(id, "wprobe_single");
    REQUIRE_MESSAGE(eventually([&] { return ticks_of(s, "tick").size() >= 4; }, 30s), s.err("a"));
    workers[0].signal(SIGKILL);
    CHECK(workers[0].wait(10s) == 128 + SIGKILL);
    std::this_thread::sleep_for(2s);
    workers.push_back(s.worker("a2"));
    (void)s.wait_serving("a2", "wprobe_single");
    std::this_thread::sleep_for(2s);
    for (auto& w : workers) w.signal(SIGTERM);
    for (auto& w : workers) (void)w.wait(30s);

    const auto ticks = ticks_of(s, "tick");
    REQUIRE(ticks.size() >= 8);
    // One run per tick: no tick twice, and none missing between the first and the last.
    CHECK(std::set<std::string>(ticks.begin(), ticks.end()).size() == ticks.size());
    std::tm first{}, last{};
    std::istringstream(ticks.front()) >> std::get_time(&first, "%Y-%m-%dT%H:%M:%SZ");
    std::istringstream(ticks.back()) >> std::get_time(&last, "%Y-%m-%dT%H:%M:%SZ");
    const auto span = timegm(&last) - timegm(&first);
    CHECK(static_cast<std::size_t>(span + 1) == ticks.size());
    // The schedule's own count agrees.
    CHECK(query_one(s.conninfo, "SELECT fired FROM flowreg.schedules WHERE name = 'tick'") ==
          std::to_string(ticks.size()));
    // More than one worker fired ticks.
    int firing = 0;
    for (const char* id : {"a", "b", "c", "a2"})
      firing += s.err(id).find("schedule(s) started") != std::string::npos ? 1 : 0;
    CHECK(firing >= 2);
  }

  TEST_CASE(
      "a file's schedules are stored when its worker starts, and removed when the file "
      "drops them; a pause by hand survives the restart") {
    auto s = schedule_scene("sched_sync");
    s.write_config(
        "schedules:\n"
        "  - {name: keep, flow: wprobe_single, cron: \"0 3 * * *\", timezone: Europe/Berlin}\n"
        "  - {name: drop, flow: wprobe_single, cron: \"@hourly\"}\n");
    {
      auto w = s.worker("a");
      (void)s.wait_serving("a", "wprobe_single");
      w.signal(SIGTERM);
      CHECK(w.wait(30s) == 0);
    }
    CHECK(s.count("schedules") == 2);
    auto store = s.store();
    REQUIRE(flowreg::app::pause_schedule(store, "keep", true));
    s.write_config(
        "schedules:\n"
        "  - {name: keep, flow: wprobe_single, cron: \"0 4 * * *\", timezone: Europe/Berlin}\n");
    {
      auto w = s.worker("b");
      (void)s.wait_serving("b", "wprobe_single");
      w.signal(SIGTERM);
      CHECK(w.wait(30s) == 0);
      CHECK(s.err("b").find("1 removed: drop") != std::string::npos);
    }
    CHECK(query_one(s.conninfo,
                    "SELECT string_agg(name || ' ' || cron || ' ' || paused || ' ' || "
                    "to_char(next_fire_at AT TIME ZONE 'Europe/Berlin', 'HH24:MI'), "
                    "',') FROM flowreg.schedules") == "keep 0 4 * * * true 04:00");
  }

  TEST_CASE("a bad schedule in a file is refused at load with its line and the reason") {
    auto s = schedule_scene("sched_bad");
    s.write_config(
        "schedules:\n"
        "  - name: bad\n"
        "    flow: wprobe_single\n"
        "    cron: \"*/0 * * * *\"\n"
        "    timezone: Europe/Berln\n");
    for (const auto& args : {std::vector<std::string>{"flows", "validate", s.config().string()},
                             std::vector<std::string>{"worker"}}) {
      std::vector<std::string> argv = {FLOWREG_BINARY, "--config", s.config().string()};
      argv.insert(argv.end(), args.begin(), args.end());
      const auto r = flowreg::test::run_process(argv);
      CAPTURE(r.err);
      CHECK(r.exit_code != 0);
      CHECK(r.err.find("flowreg.yaml:10") != std::string::npos);
      CHECK(r.err.find("*/0") != std::string::npos);
      CHECK(r.err.find("flowreg.yaml:11") != std::string::npos);
      CHECK(r.err.find("Europe/Berln") != std::string::npos);
    }
    CHECK(s.count("schedules") == 0);
  }
}

namespace {

// A schedule stored with its next tick set by hand (a worker down since then), fired by a
// Scheduler of this process serving the flow `slug` at `version`, until `done` holds.
struct PolicyScene {
  ScheduleScene scene;
  std::string version;

  explicit PolicyScene(const std::string& name) : scene(schedule_scene(name)) {
    auto store = scene.store();
    version =
        flowreg::pgtest::store_flow(store, "unserved", {flowreg::pgtest::step("only")}).version;
  }

  void add(const flowreg::ScheduleDef& def, Clock::time_point next) const {
    auto store = scene.store();
    auto stored = store.upsert_schedule(def, "api", next, true);
    REQUIRE_MESSAGE(stored, flowreg::testing::failure_text(stored));
  }

  template <class F>
  bool fire_until(F&& done) const {
    flowreg::schedule::SchedulerOptions options;
    options.conninfo = scene.conninfo;
    options.worker_id = "test";
    options.poll_interval = 100ms;
    flowreg::FlowDef def;
    def.slug = "unserved";
    flowreg::schedule::Scheduler scheduler(options, [&] {
      return std::vector<flowreg::schedule::ServedFlow>{{version, def, {}}};
    });
    return eventually(done, 20s);
  }

  int runs() const { return scene.count("runs WHERE flow_slug = 'unserved'"); }
  std::string field(const std::string& schedule, const std::string& column) const {
    return query_one(scene.conninfo, "SELECT " + column + " FROM flowreg.schedules WHERE name = '" +
                                         schedule + "'");
  }
};

// A schedule of every minute of the hour before this one (in UTC): with its next tick set to
// `minutes` minutes before this hour, that many ticks are due, the last over a minute ago (a test
// starting in the first minute of an hour waits for the second: the last tick is then late), and
// its next tick is tomorrow.
flowreg::ScheduleDef last_hour(const std::string& name, const std::string& catch_up,
                               const std::string& overlap = "allow") {
  auto now = Clock::now();
  if (std::chrono::floor<std::chrono::minutes>(now) == std::chrono::floor<std::chrono::hours>(now))
    std::this_thread::sleep_until(std::chrono::floor<std::chrono::hours>(now) + 61s);
  const auto hour = date::hh_mm_ss(Clock::now() - date::floor<date::days>(Clock::now())).hours();
  flowreg::ScheduleDef def;
  def.name = name;
  def.flow = "unserved";
  def.cron = fmt::format("* {} * * *", (hour.count() + 23) % 24);
  def.catch_up = catch_up;
  def.overlap = overlap;
  return def;
}

Clock::time_point before_this_hour(int minutes) {
  return std::chrono::floor<std::chrono::hours>(Clock::now()) - std::chrono::minutes(minutes);
}

}  // namespace

TEST_SUITE("schedules") {
  TEST_CASE(
      "catch-up after a downtime of five ticks, the last over a minute ago: none fires "
      "none, latest one, all each") {
    for (const std::string policy : {"none", "latest", "all"}) {
      CAPTURE(policy);
      PolicyScene p("sched_catch_up_" + policy);
      p.add(last_hour("s", policy), before_this_hour(5));
      // Each policy ends with the next tick in the future.
      REQUIRE(p.fire_until([&] {
        return !p.field("s", "next_fire_at > now()").empty() &&
               p.field("s", "next_fire_at > now()") == "t";
      }));
      const int expected = policy == "none" ? 0 : policy == "latest" ? 1 : 5;
      CHECK(p.runs() == expected);
      CHECK(p.field("s", "fired") == std::to_string(expected));
      CHECK(p.field("s", "skipped") == std::to_string(5 - expected));
      // Ticks dropped by policy are skipped, not an error.
      if (policy == "none")
        CHECK(p.field("s", "last_outcome").find("skipped ") == 0);
      else
        CHECK(p.field("s", "last_outcome") == "started");
      // The runs are those of the latest ticks, each with its tick in its input.
      if (expected > 0)
        CHECK(query_one(p.scene.conninfo, "SELECT max(input->>'scheduled_at') FROM flowreg.runs") ==
              flowreg::schedule::rfc3339(before_this_hour(1)));
      // Its next tick: the first minute of that hour, tomorrow.
      CHECK(p.field("s",
                    "next_fire_at = date_trunc('hour', now()) - interval '1 hour' + "
                    "interval '1 day'") == "t");
    }
  }

  TEST_CASE(
      "overlap skip drops the ticks that come while its last run runs; queue keeps one "
      "waiting until that run ended") {
    PolicyScene p("sched_overlap");
    // Nothing runs the flow: the first run stays started.
    p.add(last_hour("skip", "all", "skip"), before_this_hour(3));
    p.add(last_hour("queue", "all", "queue"), before_this_hour(3));
    REQUIRE(p.fire_until([&] {
      return p.field("skip", "next_fire_at > now()") == "t" &&
             p.field("queue", "last_outcome").starts_with("waiting");
    }));
    CHECK(p.field("skip", "fired") == "1");
    CHECK(p.field("skip", "skipped") == "2");
    CHECK(p.field("skip", "last_outcome").find("overlap: skip") != std::string::npos);
    CHECK(p.field("queue", "fired") == "1");
    // The queued tick is the one after the first, still due.
    CHECK(p.field("queue", "next_fire_at <= now()") == "t");
    CHECK(p.runs() == 2);

    // Its run ends: the queued tick fires, one at a time.
    auto store = p.scene.store();
    const auto first = p.field("queue", "last_run_id");
    REQUIRE(store.cancel_run(first));
    REQUIRE(p.fire_until([&] { return p.field("queue", "fired") == "2"; }));
    CHECK(p.field("queue", "last_run_id") != first);
    CHECK(p.runs() == 3);
  }

  TEST_CASE("two schedulers firing the same due schedules start one run per tick") {
    PolicyScene p("sched_race");
    for (int i = 0; i < 20; ++i)
      p.add(last_hour("s" + std::to_string(i), "all"), before_this_hour(4));
    flowreg::schedule::SchedulerOptions options;
    options.conninfo = p.scene.conninfo;
    options.poll_interval = 50ms;
    options.batch = 5;  // several rounds each
    flowreg::FlowDef def;
    def.slug = "unserved";
    const auto served = [&] {
      return std::vector<flowreg::schedule::ServedFlow>{{p.version, def, {}}};
    };
    {
      options.worker_id = "one";
      flowreg::schedule::Scheduler one(options, served);
      options.worker_id = "two";
      flowreg::schedule::Scheduler two(options, served);
      REQUIRE(eventually(
          [&] { return p.scene.count("schedules WHERE next_fire_at <= now()") == 0; }, 30s));
    }
    CHECK(p.runs() == 20 * 4);
    CHECK(query_one(p.scene.conninfo, "SELECT count(DISTINCT idempotency_key) FROM flowreg.runs") ==
          "80");
    CHECK(query_one(p.scene.conninfo, "SELECT sum(fired) FROM flowreg.schedules") == "80");
  }
}
