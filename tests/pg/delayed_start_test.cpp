// Delayed starts (migration 0020): a run started for a later time is created at once, shows as
// scheduled, is not claimed before its time and is claimed after it; cancelled before, it never
// runs. Through RunStore on the shared cluster, and through the real `flowreg` binary.
#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "pg/cli_scratch.hpp"
#include "pg/pg_fixture.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdd = flowreg::detail;
using DelayClock = std::chrono::system_clock;
using DelayJson = nlohmann::json;
using namespace std::chrono_literals;

struct DelayEnv {
  std::string conninfo;
  fdd::RunStore store;
};

DelayEnv delay_env(const std::string& db) {
  const auto conninfo = flowreg::pgtest::migrated_database(db);
  auto store = fdd::RunStore::connect(conninfo);
  REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
  return DelayEnv{conninfo, std::move(*store)};
}

fdd::RunInfo delayed_info(fdd::RunStore& store, const fdd::RunId& id) {
  auto info = store.get_run(id);
  REQUIRE_MESSAGE(info, flowreg::testing::failure_text(info));
  REQUIRE(info->has_value());
  return std::move(**info);
}

// Claims the tasks of `key` every 50 ms until `want` of them are claimed or `until` passes; every
// claim answered before `not_before` must have found nothing.
std::vector<fdd::ClaimedTask> claim_when_due(fdd::RunStore& store, const fdd::FlowKey& key,
                                             std::size_t want, DelayClock::time_point not_before,
                                             DelayClock::time_point until) {
  std::vector<fdd::ClaimedTask> all;
  const std::vector<fdd::FlowKey> keys{key};
  while (all.size() < want && DelayClock::now() < until) {
    auto claimed = store.claim("delay-test", keys, 1000);
    // The claim's now() (the server's clock, this machine's) was before this.
    const auto answered = DelayClock::now();
    REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
    if (answered < not_before) {
      CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(not_before - answered).count());
      REQUIRE_MESSAGE(claimed->empty(), "a delayed run's task was claimed before its time");
    }
    for (auto& t : *claimed) all.push_back(std::move(t));
    if (all.size() < want) std::this_thread::sleep_for(50ms);
  }
  return all;
}

}  // namespace

TEST_SUITE("delayed_start") {
  TEST_CASE(
      "a delayed run shows as scheduled, is not claimed before its time, and is claimed "
      "after it, in every layout of run") {
    auto env = delay_env("delayed_layouts");
    using flowreg::pgtest::step;
    struct Shape {
      const char* slug;
      std::vector<flowreg::StepDef> steps;
      std::size_t roots;  // tasks claimable at the start
    };
    const std::vector<Shape> shapes = {
        {"solo", {step("only")}, 1},                  // one task, solo (migration 0013)
        {"chain", {step("a"), step("b", {"a"})}, 1},  // a chain (migration 0017)
        {"pair", {step("x"), step("y"), step("z", {"x", "y"})}, 2},  // a DAG: two roots
    };
    for (const auto& shape : shapes) {
      CAPTURE(shape.slug);
      const auto key = flowreg::pgtest::store_flow(env.store, shape.slug, shape.steps);
      // An undelayed run of the same flow is claimable at once, and claimed first.
      auto now_run = env.store.start_run(key.slug, key.version, fdd::Json::object());
      REQUIRE_MESSAGE(now_run, flowreg::testing::failure_text(now_run));
      fdd::StartOptions options;
      options.start_at = DelayClock::now() + 2s;
      auto id = env.store.start_run(key.slug, key.version, fdd::Json::object(), options);
      REQUIRE_MESSAGE(id, flowreg::testing::failure_text(id));

      const fdd::RunInfo before = delayed_info(env.store, *id);
      CHECK(before.status == fdd::RunStatus::started);
      CHECK(before.scheduled);
      REQUIRE(before.start_at);
      CHECK(std::chrono::abs(*before.start_at - *options.start_at) < 1ms);
      const fdd::RunInfo plain = delayed_info(env.store, *now_run);
      CHECK_FALSE(plain.scheduled);
      CHECK_FALSE(plain.start_at);

      const std::vector<fdd::FlowKey> keys{key};
      auto first = env.store.claim("delay-test", keys, 1000);
      REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
      CHECK(first->size() == shape.roots);
      for (const auto& t : *first) CHECK(t.run_id == *now_run);

      const auto tasks =
          claim_when_due(env.store, key, shape.roots, *options.start_at, *options.start_at + 10s);
      REQUIRE(tasks.size() == shape.roots);
      for (const auto& t : tasks) CHECK(t.run_id == *id);
      const fdd::RunInfo after = delayed_info(env.store, *id);
      CHECK(after.status == fdd::RunStatus::started);
      CHECK_FALSE(after.scheduled);
      CHECK(after.start_at == before.start_at);
    }
  }

  TEST_CASE("a delayed run runs to its end once its time has come") {
    auto env = delay_env("delayed_completes");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "ends", {flowreg::pgtest::step("only")});
    fdd::StartOptions options;
    options.start_at = DelayClock::now() + 1500ms;
    auto id = env.store.start_run(key.slug, key.version, fdd::Json{{"n", 1}}, options);
    REQUIRE_MESSAGE(id, flowreg::testing::failure_text(id));
    const auto tasks =
        claim_when_due(env.store, key, 1, *options.start_at, *options.start_at + 10s);
    REQUIRE(tasks.size() == 1);
    CHECK(tasks[0].input == fdd::Json{{"n", 1}});
    const std::vector<fdd::Completion> done{{tasks[0].id, tasks[0].attempt, fdd::Json(7)}};
    auto rejected = env.store.complete(done);
    REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
    CHECK(rejected->empty());
    const fdd::RunInfo after = delayed_info(env.store, *id);
    CHECK(after.status == fdd::RunStatus::completed);
    CHECK_FALSE(after.scheduled);
  }

  TEST_CASE("a delayed run cancelled before its time never runs") {
    auto env = delay_env("delayed_cancelled");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "cancelled", {flowreg::pgtest::step("only")});
    fdd::StartOptions options;
    options.start_at = DelayClock::now() + 1s;
    auto id = env.store.start_run(key.slug, key.version, fdd::Json::object(), options);
    REQUIRE_MESSAGE(id, flowreg::testing::failure_text(id));
    auto cancelled = env.store.cancel_run(*id);
    REQUIRE_MESSAGE(cancelled, flowreg::testing::failure_text(cancelled));
    CHECK(*cancelled);
    const fdd::RunInfo info = delayed_info(env.store, *id);
    CHECK(info.status == fdd::RunStatus::cancelled);
    CHECK_FALSE(info.scheduled);
    // Past its time, nothing of it is claimed.
    std::this_thread::sleep_until(*options.start_at + 1500ms);
    const std::vector<fdd::FlowKey> keys{key};
    auto claimed = env.store.claim("delay-test", keys, 10);
    REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
    CHECK(claimed->empty());
    CHECK(delayed_info(env.store, *id).status == fdd::RunStatus::cancelled);
  }

  TEST_CASE("a delayed batch start, by start_runs or by COPY, starts every run at its time") {
    auto env = delay_env("delayed_batch");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "batch", {flowreg::pgtest::step("only")});
    const auto chained = flowreg::pgtest::store_flow(
        env.store, "batch_chain", {flowreg::pgtest::step("a"), flowreg::pgtest::step("b", {"a"})});
    for (const std::size_t n : {std::size_t{3}, fdd::kCopiedStartMin + 1}) {
      for (const auto& k : {key, chained}) {
        CAPTURE(n);
        CAPTURE(k.slug);
        std::vector<fdd::Json> inputs;
        for (std::size_t i = 0; i < n; ++i) inputs.push_back(fdd::Json{{"i", i}});
        const auto at = DelayClock::now() + 1500ms;
        auto ids = env.store.start_runs(k.slug, k.version, inputs, at);
        REQUIRE_MESSAGE(ids, flowreg::testing::failure_text(ids));
        REQUIRE(ids->size() == n);
        for (const auto& id : *ids) CHECK(delayed_info(env.store, id).scheduled);
        const auto tasks = claim_when_due(env.store, k, n, at, at + 10s);
        CHECK(tasks.size() == n);
        for (const auto& id : *ids) CHECK_FALSE(delayed_info(env.store, id).scheduled);
      }
    }
  }

  TEST_CASE("a repeated idempotency key with a time returns the first run and keeps its time") {
    auto env = delay_env("delayed_key");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "keyed", {flowreg::pgtest::step("only")});
    fdd::StartOptions options;
    options.idempotency_key = "once";
    options.start_at = DelayClock::now() + 1h;
    auto first = env.store.start_run(key.slug, key.version, fdd::Json::object(), options);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    options.start_at = DelayClock::now() + 2h;
    auto again = env.store.start_run(key.slug, key.version, fdd::Json::object(), options);
    REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
    CHECK(*again == *first);
    const fdd::RunInfo info = delayed_info(env.store, *first);
    REQUIRE(info.start_at);
    CHECK(*info.start_at < DelayClock::now() + 90min);
    CHECK(info.scheduled);
  }
}

namespace {

struct DelayScratch : flowreg::pgtest::CliScratch {
  DelayScratch() : CliScratch("flowreg_cli_delay") {
    std::ofstream(config) << "plugins: {dir: " << FLOWREG_EXAMPLE_PLUGIN_DIR << "}\n"
                          << "database: {data_dir: " << (dir / "data").string() << "}\n"
                          << "flows:\n"
                          << "  - slug: count\n"
                          << "    input_schema: {type: string}\n"
                          << "    steps: [{slug: words, handler: text.count_words}]\n";
  }
};

DelayJson delay_parsed(const flowreg::test::ProcessResult& r) {
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return DelayJson::parse(r.out);
}

}  // namespace

TEST_SUITE("delayed_start") {
  TEST_CASE(
      "flowreg run --at and --delay start a scheduled run; runs list, show and cancel see "
      "it; bad times are refused before anything is written") {
    DelayScratch s;
    const auto refused = [&](std::vector<std::string> args, const std::string& message) {
      CAPTURE(message);
      auto r = s.flowreg(std::move(args));
      CHECK(r.exit_code == 2);
      CHECK(r.err.find(message) != std::string::npos);
    };
    refused({"run", "count", "--input", "\"a\"", "--at", "tomorrow"},
            "--at 'tomorrow' is not a time: write RFC 3339");
    refused({"run", "count", "--input", "\"a\"", "--at", "2026-11-27T18:00:00"},
            "is not a time");  // no offset
    refused({"run", "count", "--input", "\"a\"", "--at", "2026-13-27T18:00:00Z"}, "is not a time");
    refused({"run", "count", "--input", "\"a\"", "--at", "9999-01-01T00:00:00Z"},
            "is more than 10 years ahead");
    refused({"run", "count", "--input", "\"a\"", "--delay", "5x"},
            "--delay '5x' is not a duration");
    refused({"run", "count", "--input", "\"a\"", "--delay", "100000h"},
            "--delay '100000h' is longer than the limit");
    refused({"run", "count", "--input", "\"a\"", "--delay", "5m", "--at", "2026-11-27T18:00:00Z"},
            "give --at or --delay, not both");
    // Nothing was written: no run is listed.
    CHECK(delay_parsed(s.flowreg({"runs", "list", "--json"})).empty());

    // January 2nd of next year (less than 10 years ahead).
    const std::string next_year = std::to_string(
        static_cast<int>(
            std::chrono::year_month_day(std::chrono::floor<std::chrono::days>(DelayClock::now()))
                .year()) +
        1);
    const DelayJson later = delay_parsed(
        s.flowreg({"run", "count", "--input", "\"in an hour\"", "--delay", "1h", "--json"}));
    CHECK(later["status"] == "scheduled");
    REQUIRE(later["start_at"].is_string());
    const DelayJson at = delay_parsed(s.flowreg({"run", "count", "--input", "\"at a time\"", "--at",
                                                 next_year + "-01-02T03:04:05+01:00", "--json"}));
    CHECK(at["status"] == "scheduled");
    CHECK(at["start_at"] == next_year + "-01-02T02:04:05Z");
    // A time past starts at once.
    const DelayJson past = delay_parsed(s.flowreg(
        {"run", "count", "--input", "\"past\"", "--at", "2020-01-01T00:00:00Z", "--json"}));
    CHECK(past["status"] == "started");
    CHECK(past["start_at"].is_null());

    const DelayJson listed = delay_parsed(s.flowreg({"runs", "list", "--json"}));
    REQUIRE(listed.size() == 3);
    for (const auto& r : listed) {
      CAPTURE(r);
      CHECK(r["status"] == (r["id"] == past["id"] ? "started" : "scheduled"));
    }
    // --status scheduled: the two still waiting; started: all three (their stored status).
    std::set<std::string> waiting;
    for (const auto& r :
         delay_parsed(s.flowreg({"runs", "list", "--status", "scheduled", "--json"})))
      waiting.insert(r["id"].get<std::string>());
    CHECK(waiting ==
          std::set<std::string>{later["id"].get<std::string>(), at["id"].get<std::string>()});
    CHECK(delay_parsed(s.flowreg({"runs", "list", "--status", "started", "--json"})).size() == 3);
    auto text = s.flowreg({"runs", "list"});
    CHECK(text.out.find("scheduled") != std::string::npos);
    CHECK(text.out.find("start at " + next_year + "-01-02T02:04:05Z") != std::string::npos);
    auto shown = s.flowreg({"runs", "show", at["id"].get<std::string>()});
    CHECK(shown.exit_code == 0);
    CHECK(shown.out.find("scheduled") != std::string::npos);
    CHECK(shown.out.find("start at: " + next_year + "-01-02T02:04:05Z") != std::string::npos);

    // The past run is claimable now; the scheduled ones are not.
    auto cluster = fdd::EmbeddedCluster::open(s.dir / "data");
    REQUIRE(cluster);
    auto url = cluster->ensure_running();
    REQUIRE_MESSAGE(url, flowreg::testing::failure_text(url));
    auto store = fdd::RunStore::connect(*url);
    REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
    const std::vector<fdd::FlowKey> keys{{"count", past["version"].get<std::string>()}};
    auto claimed = store->claim("delay-cli", keys, 10);
    REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
    REQUIRE(claimed->size() == 1);
    CHECK((*claimed)[0].run_id == past["id"].get<std::string>());

    auto cancel = s.flowreg({"runs", "cancel", later["id"].get<std::string>()});
    CHECK_MESSAGE(cancel.exit_code == 0, cancel.err);
    const DelayJson after =
        delay_parsed(s.flowreg({"runs", "show", later["id"].get<std::string>(), "--json"}));
    CHECK(after["status"] == "cancelled");
  }

  TEST_CASE(
      "flowreg run --priority gives the run its own priority, shown by runs show; one out of "
      "range is refused before anything is written") {
    DelayScratch s;
    for (const char* bad : {"101", "-101", "high", "1.5"}) {
      CAPTURE(bad);
      auto r = s.flowreg({"run", "count", "--input", "\"a\"", "--priority", bad});
      CHECK(r.exit_code == 2);
      CHECK(r.err.find("--priority") != std::string::npos);
    }
    CHECK(delay_parsed(s.flowreg({"runs", "list", "--json"})).empty());
    const DelayJson urgent = delay_parsed(
        s.flowreg({"run", "count", "--input", "\"now\"", "--priority", "-7", "--json"}));
    CHECK(urgent["priority"] == -7);
    const DelayJson plain =
        delay_parsed(s.flowreg({"run", "count", "--input", "\"plain\"", "--json"}));
    CHECK(plain["priority"].is_null());
    auto shown = s.flowreg({"runs", "show", urgent["id"].get<std::string>()});
    CHECK(shown.exit_code == 0);
    CHECK(shown.out.find("priority: -7 (the run's own)") != std::string::npos);
    // A batch with a priority: every run of it has it.
    const auto file = s.dir / "inputs.jsonl";
    std::ofstream(file) << "\"x\"\n\"y\"\n";
    auto many = s.flowreg({"run", "count", "--inputs", file.string(), "--priority", "3", "--json"});
    const DelayJson ids = delay_parsed(many);
    REQUIRE(ids.size() == 2);
    for (const auto& id : ids)
      CHECK(delay_parsed(
                s.flowreg({"runs", "show", id.get<std::string>(), "--json"}))["priority"] == 3);
  }
}
