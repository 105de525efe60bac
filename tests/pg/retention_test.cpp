// Retention (docs/operations.md#retention; flowreg.retain, migration 0029) and the database's
// health (app/health.hpp), on the shared cluster: a round deletes the ended runs whose time is up
// by their status and their flow's own ages, never a run still running, with everything they keep
// elsewhere; one round at a time (the retention lock, released by a session that ends); a
// `flowreg worker` or a `flowreg db retain` killed with SIGKILL mid-round leaves every batch whole
// and the next round finishes; a worker runs rounds by itself; `db health` names the pid of a
// session holding a snapshot.
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "app/health.hpp"
#include "pg/claim_env.hpp"
#include "pg/pg_fixture.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdr = flowreg::detail;
using RetJson = nlohmann::json;
using flowreg::Millis;
using namespace std::chrono_literals;

std::string retention_sql(const std::string& conninfo, const std::string& sql) {
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  const auto r = tx.exec(sql);
  return r.empty() || r[0][0].is_null() ? std::string() : r[0][0].c_str();
}

// "status=count ..." of the runs of flow `slug`, by status.
std::string retention_counts(const std::string& conninfo, const std::string& slug) {
  return retention_sql(conninfo,
                       "SELECT string_agg(status || '=' || n, ' ' ORDER BY status) FROM "
                       "(SELECT status, count(*) AS n FROM flowreg.runs WHERE flow_slug = '" +
                           slug + "' GROUP BY status) c");
}

// The rows of other tables whose run is gone: none, when every delete was whole.
std::string retention_orphans(const std::string& conninfo) {
  return retention_sql(
      conninfo,
      "SELECT (SELECT count(*) FROM flowreg.step_states s WHERE NOT EXISTS (SELECT 1 FROM "
      "flowreg.runs r WHERE r.id = s.run_id)) || ' ' || (SELECT count(*) FROM flowreg.tasks t "
      "WHERE NOT EXISTS (SELECT 1 FROM flowreg.runs r WHERE r.id = t.run_id)) || ' ' || (SELECT "
      "count(*) FROM flowreg.task_attempts a WHERE NOT EXISTS (SELECT 1 FROM flowreg.runs r WHERE "
      "r.id = a.run_id))");
}

// Every run, ended or not, as if it had been created and had ended `hours` earlier. Runs moved
// below their flow's floor (migration 0034) are walked again by a round that walks every run: the
// next one, as swept_at is cleared in the same transaction.
void age_runs(const std::string& conninfo, int hours) {
  retention_sql(conninfo, "UPDATE flowreg.runs SET created_at = created_at - interval '" +
                              std::to_string(hours) +
                              " hours', finished_at = finished_at - interval '" +
                              std::to_string(hours) +
                              " hours'; UPDATE flowreg.retention SET swept_at = NULL");
}

flowreg::RetentionSettings hours_settings(int completed, int failed, int cancelled) {
  flowreg::RetentionSettings s;
  s.runs = {Millis(completed * 3'600'000LL), Millis(failed * 3'600'000LL),
            Millis(cancelled * 3'600'000LL)};
  s.events = flowreg::Retention::kKeep;
  return s;
}

// One run of `key` (a flow of two steps, a then b) in each state: completed, failed, cancelled,
// started (its first task claimed), and started (queued).
void runs_in_every_state(fdr::RunStore& store, const fdr::FlowKey& key) {
  using flowreg::pgtest::claim_some;
  using flowreg::pgtest::start_one;
  const auto done = start_one(store, key, RetJson{{"n", 1}});
  const auto failed = start_one(store, key, RetJson{{"n", 2}});
  const auto cancelled = start_one(store, key, RetJson{{"n", 3}});
  auto c = store.cancel_run(cancelled);
  REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
  REQUIRE(*c);
  auto firsts = claim_some(store, {key}, 2, "w");
  REQUIRE(firsts.size() == 2);
  for (const auto& t : firsts) {
    if (t.run_id == done) flowreg::pgtest::complete_all(store, {t});
    if (t.run_id == failed) {
      fdr::Failure f{t.id, t.attempt, "told to fail", true};
      auto failing = store.fail({&f, 1});
      REQUIRE_MESSAGE(failing, flowreg::testing::failure_text(failing));
    }
  }
  auto second = claim_some(store, {key}, 1, "w");  // b of `done`, the only task ready
  REQUIRE(second.size() == 1);
  REQUIRE(second[0].run_id == done);
  flowreg::pgtest::complete_all(store, second);
  start_one(store, key, RetJson{{"n", 4}});
  REQUIRE(claim_some(store, {key}, 1, "w").size() == 1);
  start_one(store, key, RetJson{{"n", 5}});
}

// Completes a new run of `key` (two steps) now.
void one_completed_now(fdr::RunStore& store, const fdr::FlowKey& key) {
  const auto run = flowreg::pgtest::start_one(store, key, RetJson{{"n", 6}});
  for (int i = 0; i < 2; ++i) {
    auto claimed = flowreg::pgtest::claim_some(store, {key}, 10, "w");
    for (const auto& t : claimed) {
      if (t.run_id == run)
        flowreg::pgtest::complete_all(store, {t});
      else {
        fdr::Release r{t.id, t.attempt, false};
        REQUIRE(store.release("w", {&r, 1}));
      }
    }
  }
}

// The configuration of a `flowreg` on `conninfo`, written in `dir`: worker retention of completed
// runs 1 hour, a round every second, and the flow `slug` of one sleep step (no plugin needed) with
// `retention` (YAML, "" for none) of its own. Its path.
std::filesystem::path retention_config(const std::filesystem::path& dir,
                                       const std::string& conninfo, const std::string& slug,
                                       const std::string& retention) {
  std::filesystem::create_directories(dir / "plugins");
  const auto config = dir / "flowreg.yaml";
  std::ofstream(config) << "module: " << slug << "\ndatabase:\n  url: " << RetJson(conninfo).dump()
                        << "\n  data_dir: " << RetJson((dir / "data").string()).dump()
                        << "\nplugins: {dir: " << RetJson((dir / "plugins").string()).dump()
                        << ", watch: false}\n"
                        << "worker:\n  retention: {completed: 1h, interval: 1s}\n"
                        << "flows:\n  - slug: " << slug << "\n"
                        << (retention.empty() ? "" : "    retention: " + retention + "\n")
                        << "    steps: [{slug: nap, kind: sleep, duration: 1ms}]\n";
  return config;
}

// A round once no session holds the retention lock: a session that ended (closed, killed) holds
// it until the server has ended its backend, a moment later. Up to 10 s.
fdr::RetentionRound round_when_free(fdr::RunStore& store, const flowreg::RetentionSettings& s) {
  fdr::RetentionRound round;
  for (int i = 0; i < 100; ++i) {
    auto r = store.retain(s, "tester");
    REQUIRE_MESSAGE(r, flowreg::testing::failure_text(r));
    round = *r;
    if (!round.locked_out) break;
    std::this_thread::sleep_for(100ms);
  }
  return round;
}

}  // namespace

TEST_SUITE("retention") {
  TEST_CASE("a round deletes the ended runs whose time is up, by status and by their flow's ages") {
    auto env = flowreg::pgtest::claim_env("ret_ages");
    using flowreg::pgtest::step;
    flowreg::FlowDef plain;
    plain.slug = "ret_plain";
    plain.steps = {step("a"), step("b", {"a"})};
    flowreg::FlowDef own = plain;
    own.slug = "ret_own";
    // Completed runs kept for good, failed ones a day, cancelled ones 10 minutes.
    own.retention.completed = flowreg::Retention::kKeep;
    own.retention.failed = Millis(24 * 3'600'000LL);
    own.retention.cancelled = Millis(600'000);
    const auto plain_key = flowreg::pgtest::store_at_shape(env.store, plain);
    const auto own_key = flowreg::pgtest::store_at_shape(env.store, own);
    runs_in_every_state(env.store, plain_key);
    runs_in_every_state(env.store, own_key);
    REQUIRE(retention_counts(env.conninfo, "ret_plain") ==
            "cancelled=1 completed=1 failed=1 started=2");
    // Three hours old: past the default ages (1h completed and cancelled, 2h failed).
    age_runs(env.conninfo, 3);
    // And a run of each flow that completed just now.
    for (const auto& key : {plain_key, own_key}) one_completed_now(env.store, key);

    // A batch of one run: the walk goes on where each batch ended.
    auto round = env.store.retain(hours_settings(1, 2, 1), "tester", 1);
    REQUIRE_MESSAGE(round, flowreg::testing::failure_text(round));
    CHECK_FALSE(round->locked_out);
    // ret_plain: its three old ended runs; ret_own: its cancelled one (10 minutes), not its
    // completed (keep) nor its failed (a day) one. Runs still started stay, however old.
    CHECK(round->runs == 4);
    CHECK(retention_counts(env.conninfo, "ret_plain") == "completed=1 started=2");
    CHECK(retention_counts(env.conninfo, "ret_own") == "completed=2 failed=1 started=2");
    CHECK(retention_orphans(env.conninfo) == "0 0 0");

    auto state = env.store.retention_state();
    REQUIRE_MESSAGE(state, flowreg::testing::failure_text(state));
    CHECK(state->rounds == 1);
    CHECK(state->runs_removed == 4);
    CHECK(state->last_runs == 4);
    CHECK(state->last_worker == "tester");
    CHECK(state->last_error.empty());
    CHECK_FALSE(state->running);
    REQUIRE(state->oldest_run);
    CHECK(state->now - *state->oldest_run > 2h);

    // Nothing more is due: a second round deletes nothing and says so.
    auto again = env.store.retain(hours_settings(1, 2, 1), "tester");
    REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
    CHECK(again->runs == 0);
    // Keep everything by default: the flow's own ages still apply (its failed run, 3h old, stays
    // under a day); a default of keep deletes nothing of ret_plain.
    flowreg::RetentionSettings keep;
    keep.runs = {flowreg::Retention::kKeep, flowreg::Retention::kKeep, flowreg::Retention::kKeep};
    keep.events = flowreg::Retention::kKeep;
    age_runs(env.conninfo, 48);
    auto kept = env.store.retain(keep, "tester");
    REQUIRE_MESSAGE(kept, flowreg::testing::failure_text(kept));
    CHECK(kept->runs == 1);  // ret_own's failed run, now two days old
    CHECK(retention_counts(env.conninfo, "ret_plain") == "completed=1 started=2");
    CHECK(retention_counts(env.conninfo, "ret_own") == "completed=2 started=2");
    auto total = env.store.retention_state();
    REQUIRE_MESSAGE(total, flowreg::testing::failure_text(total));
    CHECK(total->rounds == 3);
    CHECK(total->runs_removed == 5);
  }

  TEST_CASE(
      "under a held snapshot, a round reads the runs since its flow's floor, not those removed "
      "before; an hourly round walks every run") {
    // A REPEATABLE READ snapshot taken before the first run and held to the end, as a pg_dump
    // holds one: the index entries of every run deleted since stay in runs_by_flow. Six rounds of
    // 300 runs completed, each round's runs deleted by a call of flowreg.retain whose reads of
    // runs_by_flow are counted (pg_stat_get_xact_tuples_returned, in its own transaction), then
    // a round of RunStore::retain, which records each flow's floor. Without floors the sixth call
    // read the entries of all 1,800 runs; with them, its own 300 and those of the runs created
    // less than a second before the last floor (none: each round's runs are 1.2 s older than it).
    auto env = flowreg::pgtest::claim_env("ret_floors");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "ret_floor", {flowreg::pgtest::step("a")});
    flowreg::RetentionSettings now_due;
    now_due.runs = {Millis(0), Millis(0), Millis(0)};
    now_due.events = flowreg::Retention::kKeep;
    pqxx::connection reader(env.conninfo);
    pqxx::transaction<pqxx::isolation_level::repeatable_read> held(reader);
    held.exec1("SELECT count(*) FROM flowreg.runs");
    auto first = env.store.retain(now_due, "tester");  // no run yet: swept_at is set
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    constexpr int kRuns = 300;
    pqxx::connection measurer(env.conninfo);
    std::vector<long> reads;
    for (int round = 0; round < 6; ++round) {
      std::vector<RetJson> inputs(kRuns, RetJson{{"round", round}});
      auto ids = env.store.start_runs(key.slug, key.version, inputs);
      REQUIRE_MESSAGE(ids, flowreg::testing::failure_text(ids));
      auto claimed = flowreg::pgtest::claim_some(env.store, {key}, kRuns, "w");
      REQUIRE(claimed.size() == static_cast<std::size_t>(kRuns));
      flowreg::pgtest::complete_all(env.store, claimed);
      std::this_thread::sleep_for(1200ms);
      pqxx::work tx(measurer);
      const std::string read =
          "SELECT pg_stat_get_xact_tuples_returned('flowreg.runs_by_flow'::regclass)";
      const long before = tx.exec1(read)[0].as<long>();
      const long deleted =
          tx.exec1("SELECT deleted FROM flowreg.retain(now(), 0, 0, 0, 100000, NULL, NULL)")[0]
              .as<long>();
      reads.push_back(tx.exec1(read)[0].as<long>() - before);
      tx.commit();
      CHECK(deleted == kRuns);
      auto recorded = env.store.retain(now_due, "tester");
      REQUIRE_MESSAGE(recorded, flowreg::testing::failure_text(recorded));
      CHECK(recorded->runs == 0);
    }
    std::string listed;
    for (const long r : reads) listed += " " + std::to_string(r);
    MESSAGE("entries of runs_by_flow read by each round's deleting call:", listed);
    CHECK(reads.back() < 3 * kRuns);
    CHECK(reads.back() < reads.front() + kRuns);

    // A run below its flow's floor (created by a transaction older than the floor, here moved
    // there): a round that uses the floors does not reach it; one whose last walk of every run
    // is an hour old does, and removes it.
    const auto run = flowreg::pgtest::start_one(env.store, key, RetJson{{"late", true}});
    auto late = flowreg::pgtest::claim_some(env.store, {key}, 1, "w");
    REQUIRE(late.size() == 1);
    flowreg::pgtest::complete_all(env.store, late);
    retention_sql(
        env.conninfo,
        "UPDATE flowreg.runs SET created_at = created_at - interval '1 hour' WHERE id = '" + run +
            "'");
    auto missed = env.store.retain(now_due, "tester");
    REQUIRE_MESSAGE(missed, flowreg::testing::failure_text(missed));
    CHECK(missed->runs == 0);
    CHECK(retention_counts(env.conninfo, "ret_floor") == "completed=1");
    retention_sql(env.conninfo,
                  "UPDATE flowreg.retention SET swept_at = now() - interval '61 minutes'");
    auto swept = env.store.retain(now_due, "tester");
    REQUIRE_MESSAGE(swept, flowreg::testing::failure_text(swept));
    CHECK(swept->runs == 1);
    CHECK(retention_counts(env.conninfo, "ret_floor").empty());
    CHECK(retention_sql(env.conninfo,
                        "SELECT swept_at > now() - interval '1 minute' FROM flowreg.retention") ==
          "t");
    held.commit();
  }

  TEST_CASE("one round at a time: a held retention lock makes a round do nothing until released") {
    auto env = flowreg::pgtest::claim_env("ret_lock");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "ret_locked", {flowreg::pgtest::step("a")});
    const auto run = flowreg::pgtest::start_one(env.store, key, RetJson::object());
    auto cancelled = env.store.cancel_run(run);
    REQUIRE_MESSAGE(cancelled, flowreg::testing::failure_text(cancelled));
    age_runs(env.conninfo, 3);
    {
      // Another session (a worker's round) holds the lock.
      pqxx::connection holder(env.conninfo);
      pqxx::nontransaction tx(holder);
      tx.exec_params("SELECT pg_advisory_lock($1)", fdr::kRetentionLockKey);
      auto round = env.store.retain(hours_settings(1, 1, 1), "tester");
      REQUIRE_MESSAGE(round, flowreg::testing::failure_text(round));
      CHECK(round->locked_out);
      CHECK(round->runs == 0);
      auto state = env.store.retention_state();
      REQUIRE_MESSAGE(state, flowreg::testing::failure_text(state));
      CHECK(state->running);
      CHECK(state->rounds == 0);
      CHECK(retention_counts(env.conninfo, "ret_locked") == "cancelled=1");
    }  // its session ends, as a killed worker's does: the lock goes with it
    const auto round = round_when_free(env.store, hours_settings(1, 1, 1));
    CHECK_FALSE(round.locked_out);
    CHECK(round.runs == 1);
    // The round released the lock: another session takes it at once.
    CHECK(retention_sql(env.conninfo, "SELECT pg_try_advisory_lock(" +
                                          std::to_string(fdr::kRetentionLockKey) + ")") == "t");
  }

  TEST_CASE(
      "a worker or flowreg db retain killed with SIGKILL mid-round leaves every batch whole") {
    auto env = flowreg::pgtest::claim_env("ret_kill");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "ret_many", {flowreg::pgtest::step("a")});
    // 20,000 completed runs, 3 hours old, and one still running.
    constexpr int kRuns = 20'000;
    for (int started = 0; started < kRuns; started += 1'000) {
      std::vector<RetJson> inputs(1'000, RetJson{{"x", 1}});
      auto ids = env.store.start_runs(key.slug, key.version, inputs);
      REQUIRE_MESSAGE(ids, flowreg::testing::failure_text(ids));
      auto claimed = flowreg::pgtest::claim_some(env.store, {key}, 1'000, "w");
      REQUIRE(claimed.size() == 1'000);
      flowreg::pgtest::complete_all(env.store, claimed);
    }
    flowreg::pgtest::start_one(env.store, key, RetJson::object());
    age_runs(env.conninfo, 3);
    REQUIRE(retention_counts(env.conninfo, "ret_many") == "completed=20000 started=1");

    // A worker's round (its first, 100 to 200 ms after it starts; 1,000 runs per batch), or one
    // of `db retain` in batches of 20.
    const auto dir = flowreg::pgtest::test_root() / "ret_kill";
    const auto config = retention_config(dir, env.conninfo, "retk_nap", "");
    bool by_worker = false;
    std::vector<std::string> argv{FLOWREG_BINARY, "--config", config.string()};
    SUBCASE("db retain") { argv.insert(argv.end(), {"db", "retain", "--batch", "20"}); }
    SUBCASE("a worker") {
      by_worker = true;
      argv.push_back("worker");
    }
    auto child = flowreg::test::Child::spawn(argv, (dir / "out").string(), (dir / "err").string());
    // Killed once some batches are deleted, and long before all of them are.
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    int left = kRuns;
    while (left == kRuns && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(2ms);
      left = std::stoi(retention_sql(env.conninfo,
                                     "SELECT count(*) FROM flowreg.runs WHERE "
                                     "status = 'completed'"));
    }
    child.signal(SIGKILL);
    const auto status = child.wait(10s);
    REQUIRE(status);
    CHECK(*status == 128 + SIGKILL);
    // The server finishes the statement the killed process sent (its batch commits: nothing
    // tells it the client is gone until it answers), then ends the session and its lock.
    const std::string lock_held =
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND "
        "((classid::bigint << 32) | objid::bigint) = " +
        std::to_string(fdr::kRetentionLockKey);
    for (int i = 0; i < 200 && retention_sql(env.conninfo, lock_held) != "0"; ++i)
      std::this_thread::sleep_for(50ms);
    CHECK(retention_sql(env.conninfo, lock_held) == "0");
    left = std::stoi(retention_sql(env.conninfo,
                                   "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'"));
    MESSAGE("runs left when killed: ", left);
    CHECK(left < kRuns);
    // Killed at once after its first batch: a worker's round of 20 batches, or `db retain`'s of
    // 1,000, is not over (a worker's could be, on a machine that stalls the test for its length).
    if (!by_worker) CHECK(left > 0);
    // Whole batches: no step, task or attempt of a deleted run stays; the lock went with the
    // killed session (a round runs at once, not locked out) and deletes the rest.
    CHECK(retention_orphans(env.conninfo) == "0 0 0");
    const auto round = round_when_free(env.store, hours_settings(1, 1, 1));
    CHECK_FALSE(round.locked_out);
    CHECK(round.runs == left);
    CHECK(retention_counts(env.conninfo, "ret_many") == "started=1");
    CHECK(retention_orphans(env.conninfo) == "0 0 0");
  }

  TEST_CASE("a flowreg worker runs retention by itself, every interval, and says what it removed") {
    auto env = flowreg::pgtest::claim_env("ret_worker");
    // A flow of one sleep step, kept 1 hour once completed by the worker's default, and cancelled
    // runs kept for good by the flow's own retention.
    const auto dir = flowreg::pgtest::test_root() / "ret_worker";
    const auto config = retention_config(dir, env.conninfo, "ret_nap", "{cancelled: keep}");
    auto worker = flowreg::test::Child::spawn(
        {FLOWREG_BINARY, "--config", config.string(), "--log-level", "info", "worker"},
        (dir / "out").string(), (dir / "err").string());
    // The worker stores the flow; its runs complete through it.
    const auto wait_for = [&](const std::string& sql, const std::string& want) {
      const auto deadline = std::chrono::steady_clock::now() + 60s;
      std::string got;
      while (std::chrono::steady_clock::now() < deadline) {
        try {
          got = retention_sql(env.conninfo, sql);
        } catch (const std::exception&) {
          got.clear();  // the flow's tables or rows are not there yet
        }
        if (got == want) return true;
        std::this_thread::sleep_for(50ms);
      }
      MESSAGE(sql, " gave '", got, "', not '", want, "'");
      return false;
    };
    REQUIRE(wait_for("SELECT count(*) FROM flowreg.flows WHERE slug = 'ret_nap'", "1"));
    const auto version =
        retention_sql(env.conninfo, "SELECT version FROM flowreg.flows WHERE slug = 'ret_nap'");
    std::vector<RetJson> inputs(3, RetJson::object());
    auto ids = env.store.start_runs("ret_nap", version, inputs);
    REQUIRE_MESSAGE(ids, flowreg::testing::failure_text(ids));
    auto later =
        env.store.start_runs("ret_nap", version, inputs, std::chrono::system_clock::now() + 24h);
    REQUIRE_MESSAGE(later, flowreg::testing::failure_text(later));
    auto cancelled = env.store.cancel_run(later->front());
    REQUIRE_MESSAGE(cancelled, flowreg::testing::failure_text(cancelled));
    REQUIRE(wait_for("SELECT count(*) FROM flowreg.runs WHERE status = 'completed'", "3"));
    age_runs(env.conninfo, 2);
    // The next round deletes the 3 completed runs; the cancelled one (keep) and the 2 runs
    // still to start stay.
    CHECK(wait_for("SELECT string_agg(status, ',' ORDER BY status) FROM flowreg.runs",
                   "cancelled,started,started"));
    CHECK(retention_orphans(env.conninfo) == "0 0 0");
    worker.signal(SIGTERM);
    const auto status = worker.wait(30s);
    REQUIRE(status);
    CHECK(*status == 0);
    std::ifstream err(dir / "err");
    const std::string log((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(log.find("retention removed 3 run(s)") != std::string::npos, log);
  }

  TEST_CASE("db health names the pid of a session holding a snapshot, with its query cut short") {
    auto env = flowreg::pgtest::claim_env("ret_health");
    pqxx::connection reader(env.conninfo);
    pqxx::transaction<pqxx::isolation_level::repeatable_read> snapshot(reader, "held");
    // A query of 10,000 characters, multi-byte ones among them: shown by its first 300.
    std::string comment;
    for (int i = 0; i < 2'500; ++i) comment += "é\n<b>";
    snapshot.exec("SELECT count(*) FROM flowreg.runs /* " + comment + " */");
    const auto pid = std::to_string(reader.backendpid());
    std::this_thread::sleep_for(1100ms);
    flowreg::app::HealthThresholds limits;
    limits.held = Millis(1'000);
    auto health = flowreg::app::db_health(env.store, limits);
    REQUIRE_MESSAGE(health, flowreg::testing::failure_text(health));
    const auto& holders = health->body["holders"];
    bool named = false;
    for (const auto& h : holders)
      if (h["kind"] == "session" && h["name"] == pid) {
        named = true;
        const std::string query = h["query"].get<std::string>();
        CHECK(query.find("flowreg.runs") != std::string::npos);
        // 300 characters: 35 of the SELECT, then "é\n<b>" (6 bytes for 5 characters) repeated.
        CHECK(query.size() <= 300 * 2);
        CHECK(query.size() > 300);
        CHECK(h["held_s"].get<double>() >= 1.0);
      }
    CHECK(named);
    CHECK_FALSE(health->body["ok"].get<bool>());
    bool warned = false;
    for (const auto& w : health->warnings)
      if (w.find("session pid " + pid) != std::string::npos) {
        warned = true;
        // The warning quotes the query's first 120 bytes or so, on one line.
        CHECK(w.size() < 600);
        CHECK(w.find('\n') == std::string::npos);
      }
    CHECK_MESSAGE(warned, health->body["warnings"].dump());
    // Its tables: every flowreg table, with sizes.
    bool runs_table = false;
    for (const auto& t : health->body["tables"])
      if (t["name"] == "runs") runs_table = t["table_bytes"].get<std::int64_t>() > 0;
    CHECK(runs_table);
    snapshot.abort();
    auto after = flowreg::app::db_health(env.store, limits);
    REQUIRE_MESSAGE(after, flowreg::testing::failure_text(after));
    for (const auto& h : after->body["holders"]) CHECK(h["name"] != pid);
  }
}
