// The claim under a long reader (issue 52): a REPEATABLE READ transaction opened before the runs
// start and held to the end of their drain, as a pg_dump holds one. The entries in tasks_queued
// of every task claimed since that snapshot stay in the index, dead but not removable; a claim
// that walked the queue from its oldest entry stepped over all of them, each claim more than the
// one before. Measured here by the server's counters, per claim transaction
// (pg_stat_get_xact_tuples_returned of tasks_queued: the index entries the claim read): a claim
// reads its batch and the entries since its session's frontier of each level, whatever the number
// of claims before it; once a second a claim sweeps the flow's whole queue (the session setting
// flowreg.swept_<hex of the flow's hash> tells which did). Then a task queued behind a session's
// frontier (its transaction began before the tasks that moved the frontier, and committed after
// they were claimed), and a lease that lapsed before the session's previous claim of its flow,
// are found by the session's next sweep of that flow.
#include <doctest/doctest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "pg/claim_env.hpp"
#include "pg/pg_fixture.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdl = flowreg::detail;
using LongJson = nlohmann::json;
using namespace std::chrono_literals;

// One work() call on `conn` in a transaction of its own: completes `done` (ids and attempts of
// tasks claimed before), claims up to `limit` tasks of `key`, and reads what the transaction
// read of tasks_queued and whether its claim swept.
struct MeasuredClaim {
  std::vector<std::pair<long, int>> claimed;  // id, attempt
  long queued_entries = 0;                    // index entries of tasks_queued read
  bool swept = false;
};

MeasuredClaim measured_claim(pqxx::connection& conn, const fdl::FlowKey& key,
                             const std::vector<std::pair<long, int>>& done, int limit) {
  LongJson completions = LongJson::array();
  for (const auto& [id, attempt] : done)
    completions.push_back({{"id", id}, {"attempt", attempt}, {"output", 1}});
  const LongJson flows = LongJson::array({{{"slug", key.slug}, {"version", key.version}}});
  pqxx::work tx(conn);
  // The counts of this backend not yet sent to the statistics (PostgreSQL 15 sends them at most
  // once a second: within one transaction, never), before and after the claim.
  const std::string swept = "current_setting('flowreg.swept_' || to_hex(hashtextextended(" +
                            tx.quote(key.slug + " " + key.version) + ", 0)), true)";
  const auto before = tx.exec1("SELECT " + swept +
                               ", pg_stat_get_xact_tuples_returned('flowreg.tasks_queued'"
                               "::regclass)");
  MeasuredClaim m;
  for (const auto& row : tx.exec_params(
           "SELECT id, attempt FROM flowreg.work('long-reader', $1::jsonb, '[]', $2::jsonb, $3,"
           " NULL) WHERE kind = 'claimed'",
           completions.dump(), flows.dump(), limit))
    m.claimed.emplace_back(row[0].as<long>(), row[1].as<int>());
  const auto after = tx.exec1("SELECT " + swept +
                              ", pg_stat_get_xact_tuples_returned('flowreg.tasks_queued'"
                              "::regclass)");
  m.swept = before[0].is_null() || after[0].as<std::string>() != before[0].as<std::string>();
  m.queued_entries = after[1].as<long>() - before[1].as<long>();
  tx.commit();
  return m;
}

long long_value(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  return tx.exec1(sql)[0].as<long>();
}

// Seconds from now() of a new transaction on `conn` to the session's next sweep of `key`
// (flowreg.swept_<hex>: when it is due, epoch seconds).
double sweep_due_in(pqxx::connection& conn, const fdl::FlowKey& key) {
  pqxx::work tx(conn);
  const double in = tx.exec1("SELECT current_setting('flowreg.swept_' || to_hex(hashtextextended(" +
                             tx.quote(key.slug + " " + key.version) +
                             ", 0)))::float8 - extract(epoch FROM now())::float8")[0]
                        .as<double>();
  tx.commit();
  return in;
}

// Makes the session's next sweep of `key` due `in` seconds from now (negative: past due).
void set_sweep_due(pqxx::connection& conn, const fdl::FlowKey& key, double in) {
  pqxx::nontransaction tx(conn);
  tx.exec("SELECT set_config('flowreg.swept_' || to_hex(hashtextextended(" +
          tx.quote(key.slug + " " + key.version) + ", 0)), (extract(epoch FROM now())::float8 + " +
          std::to_string(in) + ")::text, false)");
}

fdl::FlowKey one_step_flow(fdl::RunStore& store, const std::string& slug = "drained") {
  flowreg::FlowDef flow;
  flow.slug = slug;
  flow.steps = {flowreg::pgtest::step("only")};
  return flowreg::pgtest::store_at_shape(store, flow);
}

// 2,000 runs of `key` started one by one (every other one at `priority`, when given), under a
// REPEATABLE READ snapshot taken before the first and held to the end, claimed and completed 50
// at a time by one session: every run completes, the session sweeps once a second at most, and
// a claim that does not sweep reads its batch and the entries of its frontiers' 10 ms (a few per
// level: runs start a few per 10 ms here), not the entries of the claims before it.
void check_bounded_drain(flowreg::pgtest::ClaimEnv& env, const fdl::FlowKey& key,
                         std::optional<int> priority) {
  pqxx::connection reader(env.conninfo);
  pqxx::transaction<pqxx::isolation_level::repeatable_read> held(reader);
  held.exec1("SELECT count(*) FROM flowreg.tasks");

  constexpr int kRuns = 2'000;
  constexpr int kBatch = 50;
  for (int i = 0; i < kRuns; ++i) {
    const std::vector<LongJson> input = {{{"i", i}}};
    auto started = env.store.start_runs(key.slug, key.version, input, std::nullopt,
                                        i % 2 == 1 ? priority : std::nullopt);
    REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
  }

  pqxx::connection worker(env.conninfo);
  std::vector<std::pair<long, int>> done;
  std::vector<MeasuredClaim> claims;
  long claimed = 0;
  const auto began = std::chrono::steady_clock::now();
  for (;;) {
    auto m = measured_claim(worker, key, done, kBatch);
    done = m.claimed;
    claimed += static_cast<long>(m.claimed.size());
    const bool last = m.claimed.empty();
    claims.push_back(std::move(m));
    if (last) break;
    REQUIRE(claims.size() < 2 * kRuns / kBatch);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  CHECK(claimed == kRuns);
  CHECK(long_value(env.conninfo, "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'") ==
        kRuns);

  REQUIRE(claims.front().swept);  // a session's first claim of a flow sweeps it
  int sweeps = 0;
  long most = 0;  // entries read by a claim that did not sweep
  std::string reads;
  for (const auto& c : claims) {
    reads += (c.swept ? " S" : " ") + std::to_string(c.queued_entries);
    if (c.swept) {
      ++sweeps;
    } else {
      most = std::max(most, c.queued_entries);
    }
  }
  INFO("index entries of tasks_queued read per claim (S: swept):" << reads);
  CHECK(sweeps <= 1 + static_cast<int>(seconds));
  // A claim that read from each level's oldest entry would have read about 50 times its number:
  // 2,000 entries at the 40th claim. At most a tenth of that.
  CHECK(most <= 4 * kBatch);
  CHECK(most < kRuns / 10);
  held.commit();
}

}  // namespace

TEST_SUITE("long_reader") {
  TEST_CASE(
      "a held snapshot: each claim reads its batch and its frontier, not every claim before") {
    auto env = flowreg::pgtest::claim_env("long_reader_drain");
    check_bounded_drain(env, one_step_flow(env.store), std::nullopt);
  }

  TEST_CASE("a held snapshot, tasks at two priority levels: each level's walk has its frontier") {
    auto env = flowreg::pgtest::claim_env("long_reader_levels");
    check_bounded_drain(env, one_step_flow(env.store), 5);
  }

  TEST_CASE(
      "a task queued behind a session's frontier, and a lease that lapsed before its previous "
      "claim "
      "of the flow, are the session's next sweep's, though it claims another flow in between") {
    auto env = flowreg::pgtest::claim_env("long_reader_behind");
    const auto key = one_step_flow(env.store);
    const auto beside = one_step_flow(env.store, "beside");
    pqxx::connection worker(env.conninfo);
    // The first claim of each flow sweeps it. A task of `beside` claimed, its lease then set to
    // have ended a second ago: before the claims of `beside` that follow, which look for the
    // leases lapsed since the previous one.
    CHECK(measured_claim(worker, beside, {}, 10).swept);
    flowreg::pgtest::start_one(env.store, beside, {{"lapsed", true}});
    const auto leased = measured_claim(worker, beside, {}, 10);
    REQUIRE(leased.claimed.size() == 1);
    long_value(env.conninfo,
               "UPDATE flowreg.tasks SET lease_expires_at = now() - interval '1 s'"
               " WHERE id = " +
                   std::to_string(leased.claimed[0].first) + " RETURNING 1");
    // The late task's transaction begins (its available_at is now() of that moment) and inserts,
    // and does not commit yet.
    CHECK(measured_claim(worker, key, {}, 10).swept);
    pqxx::connection late_conn(env.conninfo);
    pqxx::work late(late_conn);
    const auto late_run = late.exec_params1(
                                  "SELECT run_id::text FROM flowreg.start_run($1, $2,"
                                  " '{\"late\": true}'::jsonb)",
                                  key.slug, key.version)[0]
                              .as<std::string>();
    std::this_thread::sleep_for(50ms);
    // A run started after it, committed before it, and claimed: the frontier moves past the late
    // task's available_at (50 ms before, more than the slack).
    const auto early_run = flowreg::pgtest::start_one(env.store, key, {{"late", false}});
    auto first = measured_claim(worker, key, {}, 10);
    REQUIRE(first.claimed.size() == 1);
    late.commit();
    // The late task is found, by a sweep, within about a second, and so is the lapsed lease (its
    // task claimed again, its second attempt); not lost. The claims of the two flows alternate:
    // each flow is swept once a second, whichever the session claimed last.
    bool found = false, by_sweep = false, reclaimed = false, reclaimed_by_sweep = false;
    std::vector<std::pair<long, int>> done = first.claimed;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!(found && reclaimed) && std::chrono::steady_clock::now() < deadline) {
      if (!reclaimed) {
        const auto b = measured_claim(worker, beside, {}, 10);
        if (!b.claimed.empty()) {
          CHECK(b.claimed == std::vector<std::pair<long, int>>{{leased.claimed[0].first, 2}});
          reclaimed = true;
          reclaimed_by_sweep = b.swept;
        }
      }
      if (!found) {
        auto m = measured_claim(worker, key, done, 10);
        done = m.claimed;
        found = !m.claimed.empty();
        by_sweep = m.swept;
      }
      std::this_thread::sleep_for(50ms);
    }
    CHECK(found);
    CHECK(by_sweep);
    CHECK(reclaimed);
    CHECK(reclaimed_by_sweep);
    measured_claim(worker, key, done, 10);
    CHECK(long_value(env.conninfo,
                     "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'"
                     " AND id IN ('" +
                         late_run + "', '" + early_run + "')") == 2);
  }

  TEST_CASE("a slow sweep puts the next one off: 50 times the claim's time, 1 s to 60 s") {
    auto env = flowreg::pgtest::claim_env("long_reader_sweep_every");
    const auto key = one_step_flow(env.store);
    // A flow with a rate limit without a key (one bucket): a claim of it waits while another
    // transaction holds the bucket, and so the claim that sweeps `key` with it is slow.
    flowreg::FlowDef rated;
    rated.slug = "rated";
    rated.steps = {flowreg::pgtest::step("only")};
    flowreg::RateLimit rate;
    rate.limit = 1000;
    rate.per = std::chrono::hours(1);
    rated.steps[0].rate_limit = rate;
    const auto rkey = flowreg::pgtest::store_at_shape(env.store, rated);
    pqxx::connection worker(env.conninfo);

    // A quick sweep: the next one a second later (at least: a claim preempted for more than
    // 20 ms puts it off further), and the claims until then do not sweep.
    CHECK(measured_claim(worker, key, {}, 10).swept);  // the session's first
    set_sweep_due(worker, key, -1);
    CHECK(measured_claim(worker, key, {}, 10).swept);
    const double quick = sweep_due_in(worker, key);
    CHECK(quick > 0.5);
    CHECK(quick <= 60.0);
    if (quick > 0.3) CHECK_FALSE(measured_claim(worker, key, {}, 10).swept);

    // A claim of both flows that waits 400 ms for the bucket, and sweeps `key`: the next sweep of
    // `key` at least 20 s later (50 times), at most 60 s.
    set_sweep_due(worker, key, -1);
    pqxx::connection blocker_conn(env.conninfo);
    pqxx::work blocker(blocker_conn);
    blocker.exec1("SELECT cardinality(flowreg._claim_gated('blocker', ARRAY[" +
                  blocker.quote(rkey.slug) + "], ARRAY[" + blocker.quote(rkey.version) +
                  "], 1, 5000))");
    std::thread release([&] {
      std::this_thread::sleep_for(400ms);
      blocker.commit();
    });
    {
      const LongJson flows = LongJson::array({{{"slug", rkey.slug}, {"version", rkey.version}},
                                              {{"slug", key.slug}, {"version", key.version}}});
      pqxx::work tx(worker);
      const auto began = std::chrono::steady_clock::now();
      tx.exec_params(
          "SELECT count(*) FROM flowreg.work('long-reader', '[]'::jsonb, '[]',"
          " $1::jsonb, 10, NULL)",
          flows.dump());
      CHECK(std::chrono::steady_clock::now() - began >= 300ms);
      tx.commit();
    }
    release.join();
    const double slow = sweep_due_in(worker, key);
    CHECK(slow >= 19.0);
    CHECK(slow <= 60.0);
    CHECK_FALSE(measured_claim(worker, key, {}, 10).swept);

    // Due: swept. Due more than 60 s ahead (the clock went back): swept too.
    set_sweep_due(worker, key, -0.001);
    CHECK(measured_claim(worker, key, {}, 10).swept);
    set_sweep_due(worker, key, 3600);
    CHECK(measured_claim(worker, key, {}, 10).swept);
    CHECK(sweep_due_in(worker, key) <= 60.0);
  }
}
