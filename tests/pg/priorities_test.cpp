// Priorities (migration 0022): a claim takes the highest priority first, then the oldest, across
// the flows it serves; a run started with a priority gives it to every task of it (its later steps
// and its retries included); a step's own priority applies to its tasks; a level whose tasks are
// all delayed does not hold the claim back. Through RunStore on the shared cluster.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "pg/pg_fixture.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdp = flowreg::detail;
using PrioJson = nlohmann::json;
using namespace std::chrono_literals;

struct PrioEnv {
  std::string conninfo;
  fdp::RunStore store;
};

PrioEnv prio_env(const std::string& db) {
  const auto conninfo = flowreg::pgtest::migrated_database(db);
  auto store = fdp::RunStore::connect(conninfo);
  REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
  return PrioEnv{conninfo, std::move(*store)};
}

std::string prio_sql(const std::string& conninfo, const std::string& sql) {
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  const auto r = tx.exec(sql);
  return r.empty() || r[0][0].is_null() ? std::string() : r[0][0].as<std::string>();
}

fdp::RunId prio_start(fdp::RunStore& store, const fdp::FlowKey& key, std::optional<int> priority,
                      const PrioJson& input = PrioJson::object()) {
  fdp::StartOptions options;
  options.priority = priority;
  auto id = store.start_run(key.slug, key.version, input, options);
  REQUIRE_MESSAGE(id, flowreg::testing::failure_text(id));
  return *id;
}

std::vector<fdp::ClaimedTask> prio_claim(fdp::RunStore& store, std::vector<fdp::FlowKey> keys,
                                         int limit) {
  auto claimed = store.claim("prio-test", keys, limit);
  REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
  return std::move(*claimed);
}

}  // namespace

TEST_SUITE("priorities") {
  TEST_CASE("with 100,000 tasks queued, a run started with a higher priority is claimed next") {
    auto env = prio_env("prio_backlog");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "backlog", {flowreg::pgtest::step("s")});
    // The backlog: 100,000 runs at the flow's priority (0), started in batches by COPY.
    std::vector<fdp::RunId> low;
    for (int batch = 0; batch < 20; ++batch) {
      std::vector<PrioJson> inputs(5'000, PrioJson{{"low", batch}});
      auto ids = env.store.start_runs(key.slug, key.version, inputs);
      REQUIRE_MESSAGE(ids, flowreg::testing::failure_text(ids));
      low.insert(low.end(), ids->begin(), ids->end());
    }
    REQUIRE(low.size() == 100'000);
    prio_sql(env.conninfo, "ANALYZE flowreg.tasks");
    // Claims before: the oldest first.
    auto first = prio_claim(env.store, {key}, 3);
    REQUIRE(first.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) CHECK(first[i].run_id == low[i]);

    const auto high = prio_start(env.store, key, 5, PrioJson{{"high", true}});
    CHECK(env.store.get_run(high).value()->priority == 5);
    CHECK_FALSE(env.store.get_run(low[10]).value()->priority.has_value());
    auto next = prio_claim(env.store, {key}, 1);
    REQUIRE(next.size() == 1);
    CHECK(next[0].run_id == high);
    CHECK(next[0].input == PrioJson{{"high", true}});
    // Then the backlog again, oldest first.
    auto after = prio_claim(env.store, {key}, 2);
    REQUIRE(after.size() == 2);
    CHECK(after[0].run_id == low[3]);
    CHECK(after[1].run_id == low[4]);

    // A batch started with a priority (by COPY): every run of it before the backlog, in order.
    std::vector<PrioJson> urgent(fdp::kCopiedStartMin + 2, PrioJson::object());
    auto batch = env.store.start_runs(key.slug, key.version, urgent, std::nullopt, 3);
    REQUIRE_MESSAGE(batch, flowreg::testing::failure_text(batch));
    auto taken = prio_claim(env.store, {key}, static_cast<int>(batch->size()) + 1);
    REQUIRE(taken.size() == batch->size() + 1);
    // Which tasks a claim takes is decided by priority, then age; the order it returns them in
    // is not (its worker runs them side by side).
    std::set<fdp::RunId> expected(batch->begin(), batch->end()), got;
    expected.insert(low[5]);
    for (const auto& t : taken) got.insert(t.run_id);
    CHECK(got == expected);
  }

  TEST_CASE("claims go highest priority first, then oldest, across flows and levels") {
    auto env = prio_env("prio_levels");
    using flowreg::pgtest::step;
    flowreg::Options urgent_options;
    urgent_options.priority = 7;
    const auto plain = flowreg::pgtest::store_flow(env.store, "plain", {step("s")});
    const auto urgent =
        flowreg::pgtest::store_flow(env.store, "urgent", {step("s")}, urgent_options);
    // Started in this order, with these priorities (nullopt: the flow's, 0 or 7).
    struct Start {
      const fdp::FlowKey* key;
      std::optional<int> priority;
      int expected;  // the task's priority
    };
    const std::vector<Start> starts = {
        {&plain, std::nullopt, 0},
        {&plain, -3, -3},
        {&urgent, std::nullopt, 7},
        {&plain, 5, 5},
        {&urgent, -100, -100},
        {&plain, std::nullopt, 0},
        {&urgent, std::nullopt, 7},
        {&plain, 100, 100},
        {&plain, 5, 5},
        {&urgent, 0, 0},
    };
    std::vector<std::pair<int, std::size_t>> order;  // (priority, start index)
    std::vector<fdp::RunId> ids;
    for (std::size_t i = 0; i < starts.size(); ++i) {
      ids.push_back(prio_start(env.store, *starts[i].key, starts[i].priority));
      order.emplace_back(starts[i].expected, i);
      std::this_thread::sleep_for(2ms);  // distinct available_at
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    // One claim at a time: in that order. (Which tasks a claim of several takes is decided the
    // same way; the order it returns them in is not: see the first case.)
    std::vector<fdp::RunId> claimed;
    for (std::size_t i = 0; i < starts.size(); ++i) {
      auto one = prio_claim(env.store, {plain, urgent}, 1);
      REQUIRE(one.size() == 1);
      claimed.push_back(one[0].run_id);
    }
    CHECK(prio_claim(env.store, {plain, urgent}, 10).empty());
    for (std::size_t i = 0; i < order.size(); ++i) {
      CAPTURE(i);
      CHECK(claimed[i] == ids[order[i].second]);
    }
    CHECK(prio_sql(env.conninfo,
                   "SELECT string_agg(priority::text, ',' ORDER BY priority) FROM "
                   "flowreg.queue_levels WHERE flow_slug = 'plain'") == "-3,0,5,100");
  }

  TEST_CASE("a run's priority reaches its later steps and its retries; a step may have its own") {
    auto env = prio_env("prio_steps");
    using flowreg::pgtest::step;
    // A chain (a -> b), a DAG (x, y -> z) and a step with its own priority (b2: 9).
    const auto chain =
        flowreg::pgtest::store_flow(env.store, "chain", {step("a"), step("b", {"a"})});
    auto z = step("z", {"x", "y"});
    const auto dag = flowreg::pgtest::store_flow(env.store, "dag", {step("x"), step("y"), z});
    auto own = step("b2", {"a2"});
    own.options.priority = 9;
    const auto stepped = flowreg::pgtest::store_flow(env.store, "stepped", {step("a2"), own});
    const auto task_priority = [&](const fdp::RunId& run, const std::string& slug) {
      return prio_sql(env.conninfo, "SELECT priority FROM flowreg.tasks WHERE run_id = '" + run +
                                        "' AND step_slug = '" + slug + "'");
    };
    const auto finish = [&](const std::vector<fdp::FlowKey>& keys, std::size_t want) {
      auto tasks = prio_claim(env.store, keys, 100);
      REQUIRE(tasks.size() == want);
      std::vector<fdp::Completion> done;
      for (const auto& t : tasks) done.push_back({t.id, t.attempt, PrioJson(1)});
      auto rejected = env.store.complete(done);
      REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
      CHECK(rejected->empty());
    };
    const auto c = prio_start(env.store, chain, -20);
    const auto d = prio_start(env.store, dag, 40);
    const auto s = prio_start(env.store, stepped, std::nullopt);
    const auto s2 = prio_start(env.store, stepped, 2);
    CHECK(task_priority(c, "a") == "-20");
    CHECK(task_priority(d, "x") == "40");
    CHECK(task_priority(d, "y") == "40");
    CHECK(task_priority(s, "a2") == "0");
    finish({chain, dag, stepped}, 5);
    CHECK(task_priority(c, "b") == "-20");
    CHECK(task_priority(d, "z") == "40");
    CHECK(task_priority(s, "b2") == "9");   // the step's own
    CHECK(task_priority(s2, "b2") == "2");  // the run's, over the step's

    // A failed run retried (from the start, and from its failed step) keeps its priority.
    auto failing = prio_claim(env.store, {chain}, 10);
    REQUIRE(failing.size() == 1);
    CHECK(failing[0].run_id == c);
    std::vector<fdp::Failure> failures{{failing[0].id, failing[0].attempt, "boom", true}};
    auto failed = env.store.fail(failures);
    REQUIRE_MESSAGE(failed, flowreg::testing::failure_text(failed));
    for (const auto from : {fdp::RetryFrom::start, fdp::RetryFrom::failed_step}) {
      auto retried = env.store.retry_run(c, from);
      REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
      CHECK(env.store.get_run(*retried).value()->priority == -20);
      CHECK(prio_sql(env.conninfo,
                     "SELECT string_agg(priority::text, ',') FROM flowreg.tasks "
                     "WHERE run_id = '" +
                         *retried + "'") == "-20");
    }
  }

  TEST_CASE("a level whose tasks are all delayed does not hold back the levels below it") {
    auto env = prio_env("prio_delayed");
    const auto key =
        flowreg::pgtest::store_flow(env.store, "delayed", {flowreg::pgtest::step("s")});
    // 2,000 runs at priority 50 for an hour from now, then 3 at 0 ready now.
    std::vector<PrioJson> later(2'000, PrioJson::object());
    auto delayed = env.store.start_runs(key.slug, key.version, later,
                                        std::chrono::system_clock::now() + 1h, 50);
    REQUIRE_MESSAGE(delayed, flowreg::testing::failure_text(delayed));
    std::vector<fdp::RunId> ready;
    for (int i = 0; i < 3; ++i) ready.push_back(prio_start(env.store, key, std::nullopt));
    // The claim walks level 50 up to its first task not yet due, then level 0 (the reads of
    // tasks_queued: tests/pg/hot_path_test.cpp).
    auto claimed = prio_claim(env.store, {key}, 10);
    REQUIRE(claimed.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) CHECK(claimed[i].run_id == ready[i]);
    CHECK(env.store.get_run(delayed->front()).value()->scheduled);
  }

  TEST_CASE(
      "a task whose worker died keeps its priority: requeued when its lease lapses, it is "
      "claimed before the older tasks below it") {
    auto env = prio_env("prio_lapsed");
    flowreg::Options short_lease;
    short_lease.timeout = std::chrono::milliseconds(800);
    const auto key =
        flowreg::pgtest::store_flow(env.store, "lapsed", {flowreg::pgtest::step("s")}, short_lease);
    const auto high = prio_start(env.store, key, 9);
    auto held = prio_claim(env.store, {key}, 1);
    REQUIRE(held.size() == 1);
    REQUIRE(held[0].run_id == high);
    // Its worker is gone (no renewal, no result); older-than-its-retry tasks queue up below it.
    std::vector<fdp::RunId> low;
    for (int i = 0; i < 3; ++i) low.push_back(prio_start(env.store, key, std::nullopt));
    std::this_thread::sleep_until(held[0].lease_expires_at + 200ms);
    auto again = prio_claim(env.store, {key}, 1);
    REQUIRE(again.size() == 1);
    CHECK(again[0].run_id == high);
    CHECK(again[0].attempt == 2);
    auto rest = prio_claim(env.store, {key}, 10);
    CHECK(rest.size() == 3);
  }
}
