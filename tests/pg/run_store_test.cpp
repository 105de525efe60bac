// The run store on the shared embedded cluster: every test case uses a database of its own,
// migrated with the built-in migrations, and drives the RunStore API directly.
#include "store/run_store.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <chrono>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "metrics/metrics.hpp"
#include "metrics/store_metrics.hpp"
#include "pg/pg_fixture.hpp"
#include "store/migrations.hpp"
#include "store/queries.hpp"
#include "support/metrics_text.hpp"
#include "support/result_text.hpp"
#include "support/threads.hpp"
#include "util/strings.hpp"

using flowreg::Errc;
using flowreg::FlowDef;
using flowreg::Millis;
using flowreg::StepDef;
using flowreg::StepKind;
using flowreg::detail::ClaimedTask;
using flowreg::detail::Completion;
using flowreg::detail::EmbeddedCluster;
using flowreg::detail::Failure;
using flowreg::detail::FlowKey;
using flowreg::detail::Json;
using flowreg::detail::kCopiedStartMin;
using flowreg::detail::Listener;
using flowreg::detail::RunFilter;
using flowreg::detail::RunId;
using flowreg::detail::RunStatus;
using flowreg::detail::RunStore;
using flowreg::detail::TaskId;
using flowreg::detail::TaskProcess;
namespace fd = flowreg::detail;

namespace {

// A new database of the shared cluster holding the migrated schema; returns its connection string.
std::string fresh_database(const std::string& name) {
  return flowreg::pgtest::migrated_database(name);
}

std::string sql_one(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  auto r = tx.exec(sql);
  return r.at(0).at(0).is_null() ? std::string("NULL") : r.at(0).at(0).as<std::string>();
}

void sql_exec(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  tx.exec(sql);
}

StepDef step(std::string slug, std::vector<std::string> deps = {},
             StepKind kind = StepKind::single) {
  StepDef s;
  s.slug = std::move(slug);
  s.kind = kind;
  s.depends_on = std::move(deps);
  s.handler = "test." + s.slug;
  return s;
}

FlowDef flow(std::string slug, std::vector<StepDef> steps) {
  FlowDef f;
  f.slug = std::move(slug);
  f.module = "test";
  f.steps = std::move(steps);
  return f;
}

struct Env {
  std::string conninfo;
  RunStore store;
};

Env open_env(const std::string& db) {
  auto conninfo = fresh_database(db);
  auto store = RunStore::connect(conninfo);
  if (!store) throw std::runtime_error(store.error().format());
  return Env{conninfo, std::move(*store)};
}

// Stores `f` as version "v1" and returns its key.
FlowKey store_flow(RunStore& store, const FlowDef& f, const std::string& version = "v1") {
  auto stored = store.upsert_flow(f, version);
  REQUIRE_MESSAGE(stored, flowreg::testing::failure_text(stored));
  return FlowKey{f.slug, version};
}

RunId start(RunStore& store, const FlowKey& key, const Json& input,
            const fd::StartOptions& options = {}) {
  auto run = store.start_run(key.slug, key.version, input, options);
  REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
  return *run;
}

std::vector<ClaimedTask> claim(RunStore& store, const FlowKey& key, int limit = 100,
                               const std::string& worker = "w1") {
  auto tasks = store.claim(worker, std::span<const FlowKey>(&key, 1), limit);
  REQUIRE_MESSAGE(tasks, flowreg::testing::failure_text(tasks));
  return *tasks;
}

std::vector<TaskId> complete(RunStore& store, std::vector<Completion> batch) {
  auto rejected = store.complete(batch);
  REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
  return *rejected;
}

std::vector<TaskId> fail(RunStore& store, std::vector<Failure> batch) {
  auto rejected = store.fail(batch);
  REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
  return *rejected;
}

fd::RunInfo run_info(RunStore& store, const RunId& id) {
  auto run = store.get_run(id);
  REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
  REQUIRE(run->has_value());
  return **run;
}

// Claims and completes until nothing is ready, with output = handler(task); returns every task.
template <class F>
std::vector<ClaimedTask> drain(RunStore& store, const FlowKey& key, F handler) {
  std::vector<ClaimedTask> all;
  for (;;) {
    auto tasks = claim(store, key, 50);
    if (tasks.empty()) return all;
    std::vector<Completion> batch;
    for (const auto& t : tasks) batch.push_back({t.id, t.attempt, handler(t)});
    CHECK(complete(store, batch).empty());
    all.insert(all.end(), tasks.begin(), tasks.end());
  }
}

fd::StartOptions key_opt(std::string key) {
  fd::StartOptions o;
  o.idempotency_key = std::move(key);
  return o;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

double ms_between(const std::string& conninfo, TaskId id, const std::string& from,
                  const std::string& to) {
  return std::stod(
      sql_one(conninfo, "SELECT extract(epoch FROM " + to + " - " + from +
                            ") * 1000 FROM flowreg.tasks WHERE id = " + std::to_string(id)));
}

// One work() call in a transaction of its own, through SQL: the tasks it claimed (id, run, step,
// attempt, input) and what the transaction wrote to flowreg.tasks (inserts, updates, deletes, as
// the server counts them), to tell a task created claimed from one queued and then claimed.
struct TracedWork {
  std::vector<ClaimedTask> claimed;
  int inserted = 0, updated = 0, deleted = 0;  // rows of tasks
  int flow_steps_fetched = 0;                  // rows of flow_steps read through an index
};

TracedWork traced_work(const std::string& conninfo, const std::string& worker,
                       const Json& completions, const FlowKey& key, int limit) {
  pqxx::connection conn(conninfo);
  pqxx::work tx(conn);
  const Json flows = Json::array({Json::object({{"slug", key.slug}, {"version", key.version}})});
  TracedWork out;
  for (const auto& row : tx.exec_params(
           "SELECT id, run_id::text, step_slug, attempt, input::text FROM flowreg.work($1,"
           " $2::jsonb, '[]', $3::jsonb, $4, NULL) WHERE kind = 'claimed'",
           worker, completions.dump(), flows.dump(), limit)) {
    ClaimedTask t;
    t.id = row[0].as<TaskId>();
    t.run_id = row[1].as<std::string>();
    t.step_slug = row[2].as<std::string>();
    t.attempt = row[3].as<int>();
    t.input = Json::parse(row[4].as<std::string>());
    out.claimed.push_back(std::move(t));
  }
  const auto writes = tx.exec1(
      "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_xact_user_tables"
      " WHERE schemaname = 'flowreg' AND relname = 'tasks'");
  out.inserted = writes[0].as<int>();
  out.updated = writes[1].as<int>();
  out.deleted = writes[2].as<int>();
  const auto steps = tx.exec1(
      "SELECT coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
      " WHERE schemaname = 'flowreg' AND relname = 'flow_steps'");
  out.flow_steps_fetched = steps[0].as<int>();
  tx.commit();
  return out;
}

// Seven runs of `f` (inputs 0 to 6) in a database whose sessions have a small max_stack_depth
// (100 kB: the server refuses JSON nested a few thousand levels deep), their first tasks claimed
// by "w1" through a session with that setting.
struct SmallStack {
  Env env;
  FlowKey key;
  std::vector<RunId> runs;
  RunStore store;
  std::vector<ClaimedTask> claimed;
};

SmallStack small_stack(const std::string& db, const FlowDef& f) {
  auto env = open_env(db);
  const auto key = store_flow(env.store, f);
  std::vector<RunId> runs;
  for (int i = 0; i < 7; ++i) runs.push_back(start(env.store, key, i));
  sql_exec(env.conninfo,
           "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET max_stack_depth = ''100kB''',"
           " current_database()); END $$");
  auto store = RunStore::connect(env.conninfo);  // a session with that setting
  REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
  auto claimed = store->work("w1", {}, {}, std::span<const FlowKey>(&key, 1), 10, std::nullopt);
  REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
  REQUIRE(claimed->claimed.size() == 7);
  return SmallStack{std::move(env), key, std::move(runs), std::move(*store),
                    std::move(claimed->claimed)};
}

// An array nested `depth` levels deep.
Json nested_array(int depth) {
  Json j = 1;
  for (int i = 0; i < depth; ++i) j = Json::array({std::move(j)});
  return j;
}

}  // namespace

TEST_SUITE("run_store") {
  TEST_CASE("a diamond DAG passes the run input to its root and dependency outputs onward") {
    auto env = open_env("rs_diamond");
    auto key = store_flow(env.store, flow("diamond", {step("a"), step("b", {"a"}), step("c", {"a"}),
                                                      step("d", {"b", "c"})}));
    const Json input = {{"n", 1}};
    auto run = start(env.store, key, input);
    std::map<std::string, Json> inputs;
    auto tasks = drain(env.store, key, [&](const ClaimedTask& t) {
      inputs[t.step_slug] = t.input;
      return Json{{"from", t.step_slug}};
    });
    CHECK(tasks.size() == 4);
    CHECK(inputs["a"] == input);
    CHECK(inputs["b"] == Json{{"a", {{"from", "a"}}}});
    CHECK(inputs["c"] == Json{{"a", {{"from", "a"}}}});
    CHECK(inputs["d"] == Json{{"b", {{"from", "b"}}}, {"c", {{"from", "c"}}}});
    auto info = run_info(env.store, run);
    CHECK(info.status == RunStatus::completed);
    CHECK(info.output == Json{{"d", {{"from", "d"}}}});
    CHECK(info.finished_at.has_value());
    auto steps = env.store.run_steps(run);
    REQUIRE(steps);
    REQUIRE(steps->size() == 4);
    for (const auto& s : *steps) {
      CHECK(s.status == "completed");
      CHECK(s.attempts == 1);
      CHECK(s.started_at.has_value());
      CHECK(s.finished_at.has_value());
    }
    CHECK((*steps)[3].output == Json{{"from", "d"}});
  }

  TEST_CASE("b waits for both of its dependencies before it is claimable") {
    auto env = open_env("rs_wait_deps");
    auto key = store_flow(env.store, flow("join", {step("x"), step("y"), step("z", {"x", "y"})}));
    start(env.store, key, Json::object());
    auto roots = claim(env.store, key);
    REQUIRE(roots.size() == 2);
    CHECK(complete(env.store, {{roots[0].id, roots[0].attempt, 1}}).empty());
    CHECK(claim(env.store, key).empty());
    CHECK(complete(env.store, {{roots[1].id, roots[1].attempt, 2}}).empty());
    auto z = claim(env.store, key);
    REQUIRE(z.size() == 1);
    CHECK(z[0].step_slug == "z");
  }

  TEST_CASE("a map step over an empty array completes at once with [] and its dependents start") {
    auto env = open_env("rs_map_empty");
    SUBCASE("root map") {
      auto key = store_flow(env.store, flow("map0", {step("m", {}, StepKind::map)}));
      auto run = start(env.store, key, Json::array());
      CHECK(claim(env.store, key).empty());
      auto info = run_info(env.store, run);
      CHECK(info.status == RunStatus::completed);
      CHECK(info.output == Json{{"m", Json::array()}});
    }
    SUBCASE("dependent maps in a chain, emptied by their producer") {
      auto key = store_flow(
          env.store, flow("map0dep", {step("gen"), step("m", {"gen"}, StepKind::map),
                                      step("m2", {"m"}, StepKind::map), step("after", {"m2"})}));
      auto run = start(env.store, key, 1);
      auto gen = claim(env.store, key);
      REQUIRE(gen.size() == 1);
      CHECK(complete(env.store, {{gen[0].id, gen[0].attempt, Json::array()}}).empty());
      auto after = claim(env.store, key);
      REQUIRE(after.size() == 1);
      CHECK(after[0].step_slug == "after");
      CHECK(after[0].input == Json{{"m2", Json::array()}});
      CHECK(complete(env.store, {{after[0].id, after[0].attempt, "done"}}).empty());
      CHECK(run_info(env.store, run).output == Json{{"after", "done"}});
    }
  }

  TEST_CASE("a map step over one item runs one task with that item") {
    auto env = open_env("rs_map_one");
    auto key = store_flow(env.store, flow("map1", {step("m", {}, StepKind::map)}));
    auto run = start(env.store, key, Json::array({{{"v", 5}}}));
    auto tasks = claim(env.store, key);
    REQUIRE(tasks.size() == 1);
    CHECK(tasks[0].task_index == 0);
    CHECK(tasks[0].input == Json{{"v", 5}});
    CHECK(complete(env.store, {{tasks[0].id, tasks[0].attempt, 10}}).empty());
    CHECK(run_info(env.store, run).output == Json{{"m", {10}}});
  }

  TEST_CASE("a map step over 1000 items aggregates outputs in task order, not completion order") {
    auto env = open_env("rs_map_1000");
    auto key =
        store_flow(env.store, flow("map1000", {step("m", {}, StepKind::map), step("sum", {"m"})}));
    Json input = Json::array();
    for (int i = 0; i < 1000; ++i) input.push_back(i);
    auto run = start(env.store, key, input);
    std::vector<ClaimedTask> all;
    for (;;) {
      auto tasks = claim(env.store, key, 300);
      if (tasks.empty()) break;
      all.insert(all.end(), tasks.begin(), tasks.end());
    }
    REQUIRE(all.size() == 1000);
    // Complete in reverse index order, in batches.
    std::sort(all.begin(), all.end(),
              [](const auto& a, const auto& b) { return a.task_index > b.task_index; });
    for (std::size_t i = 0; i < all.size(); i += 128) {
      std::vector<Completion> batch;
      for (std::size_t j = i; j < std::min(all.size(), i + 128); ++j) {
        CHECK(all[j].input == all[j].task_index);
        batch.push_back({all[j].id, all[j].attempt, all[j].input.get<int>() * 2});
      }
      CHECK(complete(env.store, batch).empty());
    }
    auto sum = claim(env.store, key);
    REQUIRE(sum.size() == 1);
    const Json& m = sum[0].input["m"];
    REQUIRE(m.size() == 1000);
    bool ordered = true;
    for (std::size_t i = 0; i < 1000; ++i) ordered = ordered && m[i] == 2 * i;
    CHECK(ordered);
    CHECK(complete(env.store, {{sum[0].id, sum[0].attempt, 999000}}).empty());
    CHECK(run_info(env.store, run).status == RunStatus::completed);
  }

  TEST_CASE("a map step whose input is not an array fails the run with a type error") {
    auto env = open_env("rs_map_bad");
    SUBCASE("root map over an object") {
      auto key = store_flow(env.store, flow("mapobj", {step("x", {}, StepKind::map)}));
      auto run = start(env.store, key, Json{{"a", 1}});
      auto info = run_info(env.store, run);
      CHECK(info.status == RunStatus::failed);
      CHECK(info.error == "step 'x' is a map step but its input is an object, not an array");
      CHECK(claim(env.store, key).empty());
    }
    SUBCASE("dependent map over a number; its sibling's queued task leaves the queue") {
      auto key = store_flow(env.store, flow("mapnum", {step("gen"), step("other", {"gen"}),
                                                       step("m", {"gen"}, StepKind::map)}));
      auto run = start(env.store, key, 0);
      auto gen = claim(env.store, key);
      REQUIRE(gen.size() == 1);
      CHECK(complete(env.store, {{gen[0].id, gen[0].attempt, 42}}).empty());
      auto info = run_info(env.store, run);
      CHECK(info.status == RunStatus::failed);
      CHECK(info.error == "step 'm' is a map step but its input is a number, not an array");
      CHECK(claim(env.store, key).empty());
      CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");
      CHECK(sql_one(env.conninfo, "SELECT status FROM flowreg.steps WHERE step_slug = 'other'") ==
            "cancelled");
    }
  }

  TEST_CASE("a step exhausts its retries with exponential, capped, jittered delays") {
    auto env = open_env("rs_retries");
    auto flaky = step("flaky");
    flaky.options.max_attempts = 5;
    // Seconds, not milliseconds: the test makes each retry due itself, and a shorter delay could
    // pass between a failure and the claim that checks it is not due yet on a loaded machine (it
    // did, with 100 ms, under CI).
    flaky.options.base_delay = Millis(1000);
    flaky.options.max_delay = Millis(3000);
    auto key = store_flow(env.store, flow("retries", {flaky, step("slow")}));
    auto run = start(env.store, key, Json::object());
    auto first = claim(env.store, key);
    REQUIRE(first.size() == 2);
    auto slow = first[0].step_slug == "slow" ? first[0] : first[1];
    auto task = first[0].step_slug == "flaky" ? first[0] : first[1];
    // Retry n waits min(3000, 1000 * 2^(n-1) * [0.8, 1.2]) ms.
    const double low[] = {800, 1600, 2400, 2400};
    const double high[] = {1200, 2400, 3000, 3000};
    for (int attempt = 1; attempt <= 5; ++attempt) {
      CAPTURE(attempt);
      REQUIRE(task.attempt == attempt);
      CHECK(task.max_attempts == 5);
      CHECK(fail(env.store, {{task.id, attempt, "boom " + std::to_string(attempt)}}).empty());
      if (attempt == 5) break;
      const double delay = ms_between(env.conninfo, task.id, "error_at", "available_at");
      CHECK(delay >= low[attempt - 1]);
      CHECK(delay <= high[attempt - 1]);
      CHECK(claim(env.store, key).empty());  // not due yet
      sql_exec(env.conninfo, "UPDATE flowreg.tasks SET available_at = now() WHERE id = " +
                                 std::to_string(task.id));
      auto again = claim(env.store, key);
      REQUIRE(again.size() == 1);
      task = again[0];
    }
    auto info = run_info(env.store, run);
    CHECK(info.status == RunStatus::failed);
    CHECK(info.error == "step 'flaky' failed after 5 attempts: boom 5");
    auto steps = env.store.run_steps(run);
    REQUIRE(steps);
    REQUIRE(steps->size() == 2);
    CHECK((*steps)[0].status == "failed");
    CHECK((*steps)[0].attempts == 5);
    CHECK((*steps)[1].status == "cancelled");
    // The other in-flight task was cancelled: its completion is rejected.
    CHECK(complete(env.store, {{slow.id, slow.attempt, 1}}) == std::vector<TaskId>{slow.id});
    CHECK(run_info(env.store, run).output == std::nullopt);
  }

  TEST_CASE("a permanent error fails the step and the run at once") {
    auto env = open_env("rs_permanent");
    auto key = store_flow(env.store, flow("perm", {step("a")}));
    auto run = start(env.store, key, Json::object());
    auto tasks = claim(env.store, key);
    REQUIRE(tasks.size() == 1);
    CHECK(tasks[0].max_attempts == 3);
    CHECK(fail(env.store, {{tasks[0].id, 1, "bad input", true}}).empty());
    auto info = run_info(env.store, run);
    CHECK(info.status == RunStatus::failed);
    CHECK(info.error == "step 'a' failed permanently on attempt 1: bad input");
    CHECK(claim(env.store, key).empty());
    // A second failure report of the same attempt is rejected.
    CHECK(fail(env.store, {{tasks[0].id, 1, "again"}}) == std::vector<TaskId>{tasks[0].id});
  }

  TEST_CASE("a claim leases for the step's timeout and renew extends it; stale renewals fail") {
    auto env = open_env("rs_lease");
    auto a = step("a");
    a.options.timeout = Millis(45'000);  // the flow's is 60 s
    auto key = store_flow(env.store, flow("lease", {a}));
    start(env.store, key, Json::object());
    auto tasks = claim(env.store, key);
    REQUIRE(tasks.size() == 1);
    const double lease = ms_between(env.conninfo, tasks[0].id, "started_at", "lease_expires_at");
    CHECK(lease == doctest::Approx(45'000).epsilon(0.001));
    sql_exec(env.conninfo, "UPDATE flowreg.tasks SET lease_expires_at = now() + interval '1 s'");
    fd::TaskAttempt current{tasks[0].id, tasks[0].attempt};
    auto renewed = env.store.renew("w1", std::span(&current, 1));
    REQUIRE(renewed);
    CHECK(renewed->empty());
    CHECK(std::stod(sql_one(env.conninfo,
                            "SELECT extract(epoch FROM lease_expires_at - now()) FROM "
                            "flowreg.tasks")) > 40);
    fd::TaskAttempt stale{tasks[0].id, tasks[0].attempt + 1};
    auto rejected = env.store.renew("w1", std::span(&stale, 1));
    REQUIRE(rejected);
    CHECK(*rejected == std::vector<TaskId>{tasks[0].id});
    auto other = env.store.renew("w2", std::span(&current, 1));
    REQUIRE(other);
    CHECK(*other == std::vector<TaskId>{tasks[0].id});
  }

  TEST_CASE("new attempts and delays of a stored version reach its queued and running tasks") {
    // A task reads its step's attempts and retry delays where they apply (migration 0014); its
    // timeout is the copy it took when it was created.
    auto env = open_env("rs_retune");
    auto a = step("a");
    a.options.max_attempts = 1;
    a.options.timeout = Millis(30'000);
    auto key = store_flow(env.store, flow("retune", {a}));
    start(env.store, key, Json::object());
    start(env.store, key, Json::object());
    auto running = claim(env.store, key, 1);
    REQUIRE(running.size() == 1);
    CHECK(running[0].max_attempts == 1);

    a.options.max_attempts = 3;
    a.options.base_delay = Millis(60'000);
    a.options.max_delay = Millis(60'000);
    a.options.timeout = Millis(45'000);
    auto updated = env.store.upsert_flow(flow("retune", {a}), key.version);
    REQUIRE_MESSAGE(updated, flowreg::testing::failure_text(updated));
    CHECK(*updated);

    // The queued task is claimed with the new attempts, and the timeout it was created with.
    auto queued = claim(env.store, key, 1);
    REQUIRE(queued.size() == 1);
    CHECK(queued[0].max_attempts == 3);
    CHECK(queued[0].timeout == Millis(30'000));
    CHECK(ms_between(env.conninfo, queued[0].id, "started_at", "lease_expires_at") ==
          doctest::Approx(30'000).epsilon(0.001));
    // The running one's failure finds attempts left: it waits for the new retry delay (48 to 72 s
    // with the jitter, capped at 60 s) instead of failing its run.
    CHECK(fail(env.store, {{running[0].id, running[0].attempt, "boom"}}).empty());
    CHECK(sql_one(env.conninfo,
                  "SELECT status || ' ' || (extract(epoch FROM available_at - now()) > 45)"
                  " || ' ' || (extract(epoch FROM available_at - now()) <= 60.001) || ' ' ||"
                  " (SELECT status FROM flowreg.runs r WHERE r.id = t.run_id)"
                  " FROM flowreg.tasks t WHERE id = " +
                      std::to_string(running[0].id)) == "queued true true started");
    // A run started now copies the new timeout.
    start(env.store, key, Json::object());
    auto fresh = claim(env.store, key, 1);
    REQUIRE(fresh.size() == 1);
    CHECK(fresh[0].timeout == Millis(45'000));
    CHECK(fresh[0].max_attempts == 3);
  }

  TEST_CASE("work records results, claims, rejects stale results and says when a retry is due") {
    auto env = open_env("rs_work");
    auto a = step("a");
    a.options.max_attempts = 3;
    a.options.base_delay = Millis(60'000);
    a.options.max_delay = Millis(60'000);
    auto key = store_flow(env.store, flow("work", {a, step("b")}));
    const std::span<const FlowKey> flows(&key, 1);
    const auto run = start(env.store, key, Json::object({{"n", 1}}));

    auto first = env.store.work("w1", {}, {}, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    REQUIRE(first->claimed.size() == 2);
    CHECK(first->rejected.empty());
    CHECK_FALSE(first->next_due_in.has_value());
    const auto ta = first->claimed[0].step_slug == "a" ? first->claimed[0] : first->claimed[1];
    const auto tb = first->claimed[0].step_slug == "b" ? first->claimed[0] : first->claimed[1];
    CHECK(ta.run_id == run);
    CHECK(ta.attempt == 1);
    CHECK(ta.max_attempts == 3);
    CHECK(ta.input == Json::object({{"n", 1}}));
    CHECK(ta.timeout == Millis(60'000));

    // b completes, a fails and waits ~60 s (48 to 72 s with the jitter, capped at 60 s).
    const Completion done[] = {{tb.id, tb.attempt, 2}};
    const Failure failed[] = {{ta.id, ta.attempt, "boom"}};
    auto second = env.store.work("w1", done, failed, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(second, flowreg::testing::failure_text(second));
    CHECK(second->claimed.empty());
    CHECK(second->rejected.empty());
    REQUIRE(second->next_due_in.has_value());
    CHECK(second->next_due_in->count() > 45'000);
    CHECK(second->next_due_in->count() <= 60'001);

    // The previous release read the delay from timeout_ms: still there, for its workers running
    // while a database is upgraded.
    CHECK(sql_one(env.conninfo,
                  "SELECT timeout_ms IS NOT NULL AND lease_expires_at IS NOT NULL"
                  " AND abs(timeout_ms - due_in_ms) <= 1000 FROM flowreg.work('w1', '[]', '[]',"
                  " '[{\"slug\": \"work\", \"version\": \"v1\"}]', 0, NULL)"
                  " WHERE kind = 'due'") == "t");

    // The same completion again is stale.
    auto third = env.store.work("w1", done, {}, flows, 0, std::nullopt);
    REQUIRE_MESSAGE(third, flowreg::testing::failure_text(third));
    CHECK(third->rejected == std::vector<TaskId>{tb.id});
    CHECK(third->claimed.empty());

    // A call that claimed all it asked for does not say when a retry is due: its worker claims
    // again at once, and that call tells. One with room left does.
    start(env.store, key, Json::object({{"n", 2}}));
    auto full = env.store.work("w1", {}, {}, flows, 2, std::nullopt);
    REQUIRE_MESSAGE(full, flowreg::testing::failure_text(full));
    CHECK(full->claimed.size() == 2);
    CHECK_FALSE(full->next_due_in.has_value());
    start(env.store, key, Json::object({{"n", 3}}));
    auto room = env.store.work("w1", {}, {}, flows, 3, std::nullopt);
    REQUIRE_MESSAGE(room, flowreg::testing::failure_text(room));
    CHECK(room->claimed.size() == 2);
    REQUIRE(room->next_due_in.has_value());
    CHECK(room->next_due_in->count() > 40'000);
  }

  // A chain's next step costs one write of its task: the worker whose completion makes it ready
  // gets it claimed in the same call, within its limit and for the flows it asked for; the rest is
  // queued, for any worker.
  TEST_CASE("work creates the steps its completions make ready claimed, within its limit") {
    auto env = open_env("rs_work_direct");
    const auto key = store_flow(env.store, flow("direct", {step("a"), step("b", {"a"})}));
    const auto other = store_flow(env.store, flow("elsewhere", {step("x")}));
    const std::span<const FlowKey> flows(&key, 1);
    std::map<RunId, int> number;  // run -> its input's "i"
    for (int i = 0; i < 3; ++i) number[start(env.store, key, Json::object({{"i", i}}))] = i;
    auto first = env.store.work("w1", {}, {}, flows, 3, std::nullopt);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    REQUIRE(first->claimed.size() == 3);
    const auto a_output = [&](const ClaimedTask& a) {
      return Json::object({{"from", number.at(a.run_id)}});
    };

    // Two completions, room for one more task: one b comes back claimed, with its input.
    const std::vector<Completion> two = {{first->claimed[0].id, 1, a_output(first->claimed[0])},
                                         {first->claimed[1].id, 1, a_output(first->claimed[1])}};
    auto second = env.store.work("w1", two, {}, flows, 1, std::nullopt);
    REQUIRE_MESSAGE(second, flowreg::testing::failure_text(second));
    CHECK(second->rejected.empty());
    REQUIRE(second->claimed.size() == 1);
    const ClaimedTask b = second->claimed[0];
    CHECK(b.step_slug == "b");
    CHECK(b.attempt == 1);
    REQUIRE(number.count(b.run_id) == 1);
    CHECK(b.input == Json::object({{"a", Json::object({{"from", number.at(b.run_id)}})}}));
    CHECK(b.timeout == Millis(60'000));
    const std::string b_row =
        "SELECT status || ' ' || worker_id || ' ' ||"
        " (lease_expires_at > now() + interval '50 s') FROM flowreg.tasks"
        " WHERE id = " +
        std::to_string(b.id);
    CHECK(sql_one(env.conninfo, b_row) == "started w1 true");
    // The other b is queued: another worker claims it.
    const auto w2 = claim(env.store, key, 10, "w2");
    REQUIRE(w2.size() == 1);
    CHECK(w2[0].step_slug == "b");
    CHECK(w2[0].run_id != b.run_id);
    CHECK(w2[0].input.at("a").at("from") == number.at(w2[0].run_id));

    // A worker asking for other flows leaves the next step queued.
    const ClaimedTask& a3 = first->claimed[2];
    auto third = env.store.work("w3", std::vector<Completion>{{a3.id, 1, a_output(a3)}}, {},
                                std::span<const FlowKey>(&other, 1), 10, std::nullopt);
    REQUIRE_MESSAGE(third, flowreg::testing::failure_text(third));
    CHECK(third->claimed.empty());
    const auto w4 = claim(env.store, key, 10, "w4");
    REQUIRE(w4.size() == 1);
    CHECK(w4[0].run_id == a3.run_id);
    CHECK(w4[0].step_slug == "b");

    // Written once: the transaction that records a completion and claims the next step inserts
    // that task and updates none.
    const RunId last = start(env.store, key, Json::object({{"i", 3}}));
    number[last] = 3;
    const auto a4 = claim(env.store, key, 10, "w5");
    REQUIRE(a4.size() == 1);
    CHECK(a4[0].run_id == last);
    const auto traced = traced_work(
        env.conninfo, "w5",
        Json::array({Json::object({{"id", a4[0].id}, {"attempt", 1}, {"output", 4}})}), key, 10);
    REQUIRE(traced.claimed.size() == 1);
    CHECK(traced.claimed[0].step_slug == "b");
    CHECK(traced.claimed[0].run_id == last);
    CHECK(traced.claimed[0].attempt == 1);
    CHECK(traced.claimed[0].input == Json::object({{"a", 4}}));
    CHECK(traced.inserted == 1);
    CHECK(traced.updated == 0);
    CHECK(traced.deleted == 1);
  }

  // A chain's step completion probes its flow's steps by key: what it reads does not grow with the
  // chain's length (the next step's options were read through a probe by flow version only, which
  // fetched up to every step of the flow for each task: 13 to 16 rows per call here).
  TEST_CASE("a chain's completion reads as many of its flow's steps at any length") {
    auto env = open_env("rs_long_chain");
    std::vector<StepDef> steps{step("s1")};
    for (int i = 2; i <= 20; ++i)
      steps.push_back(step("s" + std::to_string(i), {"s" + std::to_string(i - 1)}));
    const auto key = store_flow(env.store, flow("long_chain", steps));
    const RunId run = start(env.store, key, Json::object());
    auto first = claim(env.store, key, 1);
    REQUIRE(first.size() == 1);
    ClaimedTask task = first[0];
    for (int i = 2; i <= 20; ++i) {
      CAPTURE(i);
      const auto traced = traced_work(
          env.conninfo, "w1",
          Json::array({Json::object({{"id", task.id}, {"attempt", task.attempt}, {"output", i}})}),
          key, 1);
      REQUIRE(traced.claimed.size() == 1);
      CHECK(traced.claimed[0].step_slug == "s" + std::to_string(i));
      CHECK(traced.claimed[0].input == Json::object({{"s" + std::to_string(i - 1), i}}));
      CHECK(traced.flow_steps_fetched <= 3);
      task = traced.claimed[0];
    }
    const auto last = traced_work(
        env.conninfo, "w1",
        Json::array({Json::object({{"id", task.id}, {"attempt", task.attempt}, {"output", 21}})}),
        key, 1);
    CHECK(last.claimed.empty());
    CHECK(last.flow_steps_fetched <= 3);
    const std::string ended = "SELECT status || ' ' || output::text FROM flowreg.runs WHERE id = '";
    CHECK(sql_one(env.conninfo, ended + run + "'") == "completed {\"s20\": 21}");
  }

  TEST_CASE("work creates a map step's tasks its completion makes ready claimed, as room allows") {
    auto env = open_env("rs_work_direct_map");
    const auto key =
        store_flow(env.store, flow("direct_map", {step("a"), step("each", {"a"}, StepKind::map)}));
    const std::span<const FlowKey> flows(&key, 1);
    const RunId run = start(env.store, key, Json::object());
    auto first = env.store.work("w1", {}, {}, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    REQUIRE(first->claimed.size() == 1);

    // a's output has 5 elements; the worker has room for 3 tasks: the first three, which the
    // transaction inserts claimed (5 inserts, no update; a's task leaves).
    const Json elements = Json::array({"p", "q", "r", "s", "t"});
    const auto second = traced_work(
        env.conninfo, "w1",
        Json::array(
            {Json::object({{"id", first->claimed[0].id}, {"attempt", 1}, {"output", elements}})}),
        key, 3);
    REQUIRE(second.claimed.size() == 3);
    std::set<std::string> got;
    for (const auto& t : second.claimed) {
      CHECK(t.run_id == run);
      CHECK(t.step_slug == "each");
      CHECK(t.attempt == 1);
      got.insert(t.input.get<std::string>());
    }
    CHECK(got == std::set<std::string>{"p", "q", "r"});
    CHECK(second.inserted == 5);
    CHECK(second.updated == 0);
    CHECK(second.deleted == 1);
    CHECK(sql_one(env.conninfo,
                  "SELECT string_agg(status || ':' || coalesce(worker_id, '-'), ' '"
                  " ORDER BY status) FROM flowreg.tasks WHERE step_slug = 'each'") ==
          "queued:- queued:- started:w1 started:w1 started:w1");
    // The other two are queued; the step completes with its five outputs in element order.
    const auto rest = claim(env.store, key, 10, "w2");
    REQUIRE(rest.size() == 2);
    std::vector<Completion> all;
    for (const auto& t : second.claimed) all.push_back({t.id, 1, t.input});
    for (const auto& t : rest) all.push_back({t.id, 1, t.input});
    CHECK(complete(env.store, all).empty());
    const auto info = run_info(env.store, run);
    CHECK(info.status == RunStatus::completed);
    REQUIRE(info.output.has_value());
    CHECK(*info.output == Json::object({{"each", elements}}));

    // Two map steps made ready at once share the room: 3 + 3 tasks, room for 4.
    start(env.store, key, Json::object());
    start(env.store, key, Json::object());
    auto roots = env.store.work("w3", {}, {}, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(roots, flowreg::testing::failure_text(roots));
    REQUIRE(roots->claimed.size() == 2);
    Json both = Json::array();
    for (const auto& t : roots->claimed)
      both.push_back(Json::object({{"id", t.id}, {"attempt", 1}, {"output", {1, 2, 3}}}));
    const auto shared = traced_work(env.conninfo, "w3", both, key, 4);
    CHECK(shared.claimed.size() == 4);
    CHECK(shared.inserted == 6);
    CHECK(shared.updated == 0);
    CHECK(sql_one(env.conninfo,
                  "SELECT string_agg(status, ' ' ORDER BY status) FROM flowreg.tasks"
                  " WHERE step_slug = 'each'") == "queued queued started started started started");
  }

  // One output the server refuses must not cost the rest of its batch anything: the task whose
  // output holds U+0000 (checked before sending) and the task whose output the server refuses
  // (here: nested deeper than this database's small max_stack_depth lets it parse, found by the
  // fallback that asks the server output by output) fail alone, permanently, with the reason.
  TEST_CASE("a refused output in the middle of a batch fails its task alone, with the reason") {
    auto only = step("only");
    only.options.max_attempts = 3;
    auto scene = small_stack("rs_refused", flow("refused", {only}));
    auto& env = scene.env;
    auto& store = scene.store;
    const auto& key = scene.key;
    const auto& runs = scene.runs;
    const std::span<const FlowKey> flows(&key, 1);
    const Json deep = nested_array(3000);
    std::vector<Completion> batch;
    std::map<RunId, TaskId> task_of;
    for (const auto& t : scene.claimed) {
      const int n = t.input.get<int>();
      Json out = Json::object({{"n", n}});
      if (n == 2) out = Json::object({{"text", std::string("a\0b", 3)}});
      if (n == 4) out = deep;
      batch.push_back({t.id, t.attempt, out});
      task_of[t.run_id] = t.id;
    }
    auto done = store.work("w1", batch, {}, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(done, flowreg::testing::failure_text(done));
    CHECK(done->rejected.empty());
    auto refused = done->refused;
    std::sort(refused.begin(), refused.end());
    auto expected = std::vector<TaskId>{task_of[runs[2]], task_of[runs[4]]};
    std::sort(expected.begin(), expected.end());
    CHECK(refused == expected);
    for (int i = 0; i < 7; ++i) {
      const auto info = run_info(store, runs[static_cast<std::size_t>(i)]);
      CAPTURE(i);
      if (i == 2 || i == 4) {
        CHECK(info.status == RunStatus::failed);
        REQUIRE(info.error);
        CHECK(contains(*info.error, "permanently on attempt 1"));
        CHECK(contains(*info.error, "the database refused the handler's output"));
        CHECK(contains(*info.error, i == 2 ? "U+0000" : "stack depth"));
      } else {
        CHECK(info.status == RunStatus::completed);
        CHECK(info.output == Json::object({{"only", Json::object({{"n", i}})}}));
      }
    }
    // complete() does the same.
    const auto more = start(env.store, key, 9);
    auto t = claim(store, key);
    REQUIRE(t.size() == 1);
    CHECK(complete(store, {{t[0].id, t[0].attempt, Json(std::string(1, '\0'))}}).empty());
    CHECK(run_info(store, more).status == RunStatus::failed);
  }

  // The same batch, where the valid outputs make map steps ready: their elements (bytes that are
  // not UTF-8, nesting, a large string) become tasks created claimed by the worker in the call
  // that records them, also when that call is the one sent again without the refused outputs.
  TEST_CASE(
      "a refused output in a batch that makes map steps ready: the rest's tasks are claimed") {
    auto scene =
        small_stack("rs_refused_fanout",
                    flow("refused_fanout", {step("a"), step("each", {"a"}, StepKind::map)}));
    auto& store = scene.store;
    const std::span<const FlowKey> flows(&scene.key, 1);
    const Json deep = nested_array(3000);  // refused by the server, not by the check before sending
    const Json nested = nested_array(50);  // accepted
    const std::string big(1 << 20, 'x');
    std::vector<Completion> batch;
    for (const auto& t : scene.claimed) {
      const int n = t.input.get<int>();
      Json out = Json::array({"bad \xff\xfe bytes " + std::to_string(n), nested, big});
      if (n == 2) out = Json::array({std::string("a\0b", 3)});
      if (n == 4) out = Json::array({deep});
      batch.push_back({t.id, t.attempt, out});
    }
    auto done = store.work("w1", batch, {}, flows, 100, std::nullopt);
    REQUIRE_MESSAGE(done, flowreg::testing::failure_text(done));
    CHECK(done->refused.size() == 2);
    // Five runs' three elements each, claimed in that call, with the elements as stored.
    REQUIRE(done->claimed.size() == 15);
    std::map<RunId, int> per_run;
    for (const auto& t : done->claimed) {
      CHECK(t.step_slug == "each");
      CHECK(t.attempt == 1);
      ++per_run[t.run_id];
      if (t.task_index == 0) {
        REQUIRE(t.input.is_string());
        const auto& text = t.input.get_ref<const std::string&>();
        CHECK(fd::is_utf8(text));
        CHECK(text.rfind("bad \xEF\xBF\xBD", 0) == 0);
      } else if (t.task_index == 1) {
        CHECK(t.input == nested);
      } else {
        CHECK(t.input == Json(big));
      }
    }
    CHECK(per_run.size() == 5);
    for (int i : {2, 4}) {
      CAPTURE(i);
      const RunId& run = scene.runs[static_cast<std::size_t>(i)];
      CHECK(per_run.count(run) == 0);
      const auto info = run_info(store, run);
      CHECK(info.status == RunStatus::failed);
      CHECK(contains(info.error.value_or(""), i == 2 ? "U+0000" : "stack depth"));
    }
    // Their completion completes the five runs.
    std::vector<Completion> rest;
    for (const auto& t : done->claimed) rest.push_back({t.id, t.attempt, Json(t.task_index)});
    CHECK(complete(store, rest).empty());
    for (const auto& [run, n] : per_run) {
      CAPTURE(run);
      CHECK(n == 3);
      const auto info = run_info(store, run);
      CHECK(info.status == RunStatus::completed);
      CHECK(info.output == Json::object({{"each", Json::array({0, 1, 2})}}));
    }
  }

  // The same for a chain's steps (migration 0017: a step's state is inserted as it ends, the next
  // step's task created claimed in that statement): refused outputs, and a failure whose text is
  // not UTF-8 and holds U+0000, in one call with valid outputs (bytes that are not UTF-8, nesting,
  // a large string): the refused and the failed end alone, each with its step state; the others'
  // next steps are claimed in that call, with the outputs as stored for input.
  TEST_CASE("a chain's batch with refused outputs and a hostile failure: the rest go on") {
    auto scene =
        small_stack("rs_refused_chain", flow("refused_chain", {step("a"), step("b", {"a"})}));
    auto& store = scene.store;
    const std::span<const FlowKey> flows(&scene.key, 1);
    const Json deep = nested_array(3000);  // refused by the server, not by the check before sending
    const Json nested = nested_array(50);  // accepted
    const std::string big(1 << 20, 'x');
    std::vector<Completion> batch;
    std::vector<Failure> failures;
    for (const auto& t : scene.claimed) {
      const int n = t.input.get<int>();
      Json out = Json::object(
          {{"s", "bad \xff\xfe bytes " + std::to_string(n)}, {"nested", nested}, {"big", big}});
      if (n == 2) out = Json::object({{"s", std::string("a\0b", 3)}});
      if (n == 4) out = deep;
      if (n == 5)
        failures.push_back({t.id, t.attempt, std::string("broken \xff\xfe \0 end", 14), true});
      else
        batch.push_back({t.id, t.attempt, out});
    }
    auto done = store.work("w1", batch, failures, flows, 100, std::nullopt);
    REQUIRE_MESSAGE(done, flowreg::testing::failure_text(done));
    CHECK(done->rejected.empty());
    CHECK(done->refused.size() == 2);
    // Four runs' step b, claimed in that call; its input is a's output as stored.
    REQUIRE(done->claimed.size() == 4);
    std::set<RunId> going;
    for (const auto& t : done->claimed) {
      CHECK(t.step_slug == "b");
      CHECK(t.attempt == 1);
      going.insert(t.run_id);
      const Json& a = t.input.at("a");
      const auto& text = a.at("s").get_ref<const std::string&>();
      CHECK(fd::is_utf8(text));
      CHECK(text.rfind("bad \xEF\xBF\xBD", 0) == 0);
      CHECK(a.at("nested") == nested);
      CHECK(a.at("big") == Json(big));
    }
    CHECK(going == std::set<RunId>{scene.runs[0], scene.runs[1], scene.runs[3], scene.runs[6]});
    for (int i : {2, 4, 5}) {
      CAPTURE(i);
      const RunId& run = scene.runs[static_cast<std::size_t>(i)];
      const auto info = run_info(store, run);
      CHECK(info.status == RunStatus::failed);
      const std::string error = info.error.value_or("");
      CHECK(fd::is_utf8(error));
      CHECK(contains(error, i == 2 ? "U+0000" : i == 4 ? "stack depth" : "broken \xEF\xBF\xBD"));
      auto steps = store.run_steps(run);
      REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
      REQUIRE(steps->size() == 2);
      CHECK((*steps)[0].status == "failed");
      CHECK((*steps)[0].error == info.error);
      CHECK((*steps)[0].attempts == 1);
      CHECK((*steps)[1].status == "cancelled");
    }
    // Their completion completes the four runs; a's state keeps its output as stored.
    std::vector<Completion> rest;
    for (const auto& t : done->claimed) rest.push_back({t.id, t.attempt, Json{{"ok", true}}});
    CHECK(complete(store, rest).empty());
    for (const auto& run : going) {
      CAPTURE(run);
      CHECK(run_info(store, run).output == Json{{"b", {{"ok", true}}}});
      auto steps = store.run_steps(run);
      REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
      REQUIRE(steps->size() == 2);
      CHECK((*steps)[0].status == "completed");
      REQUIRE((*steps)[0].output);
      CHECK((*steps)[0].output->at("big") == Json(big));
      CHECK((*steps)[1].status == "completed");
    }
  }

  // A chain's next task created claimed goes back to work() from the statement that creates it,
  // not read back by _claim: each column must be what the table and the step say, as for a task
  // the queue gives, and the tasks so claimed count in the worker's room.
  TEST_CASE("a chain's next steps claimed in place: every column as stored, within the room") {
    auto env = open_env("rs_chain_in_place");
    StepDef a = step("a");
    a.options.max_attempts = 2;
    a.options.timeout = Millis(20'000);
    StepDef b = step("b", {"a"});
    b.options.max_attempts = 4;
    b.options.timeout = Millis(7'000);
    const auto key = store_flow(env.store, flow("in_place", {a, b, step("c", {"b"})}));
    const std::span<const FlowKey> flows(&key, 1);
    for (int i = 0; i < 3; ++i) start(env.store, key, i);
    auto first = env.store.work("w1", {}, {}, flows, 3, std::nullopt);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    REQUIRE(first->claimed.size() == 3);
    for (int i = 3; i < 5; ++i) start(env.store, key, i);  // two roots queued
    std::vector<Completion> done;
    for (const auto& t : first->claimed)
      done.push_back({t.id, t.attempt, Json{{"n", t.input.get<int>()}}});
    // Room for 2: two b tasks claimed in place, the third queued, nothing from the queue.
    auto second = env.store.work("w1", done, {}, flows, 2, std::nullopt);
    REQUIRE_MESSAGE(second, flowreg::testing::failure_text(second));
    REQUIRE(second->claimed.size() == 2);
    CHECK(
        sql_one(env.conninfo,
                "SELECT count(*) FROM flowreg.tasks WHERE status = 'queued' AND step_slug = 'b'") ==
        "1");
    // The queue gives the third b (and the two roots): its columns are _claim's.
    auto third = env.store.work("w1", {}, {}, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(third, flowreg::testing::failure_text(third));
    REQUIRE(third->claimed.size() == 3);
    std::vector<ClaimedTask> bs = second->claimed;
    for (const auto& t : third->claimed)
      if (t.step_slug == "b") bs.push_back(t);
    REQUIRE(bs.size() == 3);
    for (const auto& t : bs) {
      CAPTURE(t.id);
      CHECK(t.flow_slug == key.slug);
      CHECK(t.flow_version == key.version);
      CHECK(t.step_slug == "b");
      CHECK(t.task_index == 0);
      CHECK(t.attempt == 1);
      CHECK(t.max_attempts == 4);
      CHECK(t.timeout == Millis(7'000));
      REQUIRE(t.input.contains("a"));
      CHECK(t.input == Json{{"a", {{"n", t.input.at("a").at("n")}}}});
      const std::string id = std::to_string(t.id);
      CHECK(sql_one(env.conninfo,
                    "SELECT run_id::text || ' ' || status || ' ' || worker_id || ' ' || attempt ||"
                    " ' ' || (lease_expires_at = started_at + interval '7 s') || ' ' ||"
                    " (extract(epoch FROM lease_expires_at) * 1000000)::bigint"
                    " FROM flowreg.tasks WHERE id = " +
                        id) ==
            t.run_id + " started w1 1 true " +
                std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(
                                   t.lease_expires_at.time_since_epoch())
                                   .count()));
    }
    std::set<int> inputs;
    for (const auto& t : bs) inputs.insert(t.input.at("a").at("n").get<int>());
    CHECK(inputs == std::set<int>{0, 1, 2});
  }

  // One work() call whose completions make both a chain's next step and a DAG's steps ready: the
  // chain's, claimed in place, take their room first, and the DAG's are claimed in what is left,
  // the rest queued: the call claims no more than its limit.
  TEST_CASE(
      "a chain's next step claimed in place leaves the DAG's steps of the same call its room") {
    auto env = open_env("rs_chain_and_dag_room");
    const auto chain = store_flow(env.store, flow("room_chain", {step("a"), step("b", {"a"})}));
    const auto fork =
        store_flow(env.store, flow("room_fork", {step("r"), step("x", {"r"}), step("y", {"r"})}));
    const std::vector<FlowKey> keys{chain, fork};
    const auto in_chain = start(env.store, chain, 1);
    const auto in_fork = start(env.store, fork, 2);
    auto first = env.store.work("w1", {}, {}, keys, 10, std::nullopt);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    REQUIRE(first->claimed.size() == 2);
    std::vector<Completion> done;
    for (const auto& t : first->claimed) done.push_back({t.id, t.attempt, Json{{"ok", true}}});
    // Room for 2: the chain's b, then one of x and y; the other is queued.
    auto second = env.store.work("w1", done, {}, keys, 2, std::nullopt);
    REQUIRE_MESSAGE(second, flowreg::testing::failure_text(second));
    REQUIRE(second->claimed.size() == 2);
    std::multiset<std::string> claimed;
    for (const auto& t : second->claimed) claimed.insert(t.run_id + "/" + t.step_slug);
    CHECK(claimed.count(in_chain + "/b") == 1);
    CHECK(claimed.count(in_fork + "/x") + claimed.count(in_fork + "/y") == 1);
    CHECK(sql_one(env.conninfo,
                  "SELECT string_agg(status, ',' ORDER BY status) FROM flowreg.tasks WHERE run_id"
                  " = '" +
                      in_fork + "'") == "queued,started");
  }

  // Completing a batch reads tasks by primary key only, whatever the statistics say: with a full
  // queue analyzed (most tasks queued), neither the tasks' partial indexes nor a scan of
  // step_states or runs serve a completion.
  TEST_CASE("completing a batch of 512 walks primary keys after ANALYZE of a full queue") {
    auto env = open_env("rs_complete_plans");
    auto key = store_flow(env.store, flow("cplans", {step("a")}));
    std::vector<Json> inputs(4000, Json(1));
    REQUIRE(env.store.start_runs(key.slug, key.version, inputs));
    auto tasks = claim(env.store, key, 512);
    REQUIRE(tasks.size() == 512);
    sql_exec(env.conninfo, "ANALYZE");
    Json batch = Json::array();
    for (const auto& t : tasks)
      batch.push_back({{"id", t.id}, {"attempt", t.attempt}, {"output", {{"x", 1}}}});
    pqxx::connection worker(env.conninfo);
    const auto counts = [&] {
      pqxx::nontransaction tx(worker);
      tx.exec("SELECT pg_stat_force_next_flush()");  // this backend's counts, flushed when idle
      pqxx::connection reader(env.conninfo);
      pqxx::nontransaction rtx(reader);
      auto r = rtx.exec(
          "SELECT (SELECT sum(seq_scan) FROM pg_stat_user_tables WHERE schemaname = 'flowreg'"
          "        AND relname IN ('runs', 'tasks', 'step_states')),"
          "       (SELECT sum(idx_scan) FROM pg_stat_user_indexes WHERE schemaname = 'flowreg'"
          "        AND indexrelname IN ('tasks_leased', 'tasks_queued'))");
      return std::pair{r.at(0).at(0).as<long>(), r.at(0).at(1).as<long>()};
    };
    const auto before = counts();
    {
      pqxx::nontransaction tx(worker);
      auto rejected =
          tx.exec_params("SELECT cardinality(flowreg.complete_tasks($1::jsonb))", batch.dump());
      CHECK(rejected.at(0).at(0).as<int>() == 0);
    }
    const auto after = counts();
    CHECK(after.first == before.first);    // no table read whole
    CHECK(after.second == before.second);  // no partial index of tasks walked
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'") ==
          "512");
  }

  // PostgreSQL logs an update that stays in its page as the new row's bytes between the first and
  // the last that changed; the columns a completion changes are the last of runs (migration 0018),
  // so the run's input, before them, is not logged again. Before 0018 it was: a completion of a
  // run with a 1,000-byte input logged about 1,000 bytes more. Read from the WAL itself
  // (pg_walinspect), the records of this database's runs table only, without full-page images.
  TEST_CASE("a run's completion logs what it changes, not the run's input again") {
    auto env = open_env("rs_completion_wal");
    auto key = store_flow(env.store, flow("walin", {step("a")}));
    sql_exec(env.conninfo, "CREATE EXTENSION IF NOT EXISTS pg_walinspect");
    const std::string runs_rel = sql_one(
        env.conninfo,
        "SELECT 'rel ' || CASE WHEN reltablespace = 0 THEN (SELECT dattablespace FROM pg_database"
        " WHERE datname = current_database()) ELSE reltablespace END || '/' || (SELECT oid FROM"
        " pg_database WHERE datname = current_database()) || '/' || relfilenode || ' '"
        " FROM pg_class WHERE oid = 'flowreg.runs'::regclass");
    // Completes the runs started with `input`; the WAL their runs' rows took, per run, and the
    // records it was in.
    const auto completion_wal = [&](const Json& input) {
      std::vector<Json> inputs(20, input);
      REQUIRE(env.store.start_runs(key.slug, key.version, inputs));
      auto tasks = claim(env.store, key, 100);
      REQUIRE(tasks.size() == 20);
      std::vector<Completion> batch;
      for (const auto& t : tasks) batch.push_back({t.id, t.attempt, Json{{"ok", true}}, 0});
      const std::string from = sql_one(env.conninfo, "SELECT pg_current_wal_insert_lsn()");
      CHECK(complete(env.store, batch).empty());
      const std::string to = sql_one(env.conninfo, "SELECT pg_current_wal_insert_lsn()");
      const std::string found =
          sql_one(env.conninfo,
                  "SELECT count(*) || ' ' || coalesce(sum(record_length - fpi_length), 0) / 20"
                  " FROM pg_get_wal_records_info('" +
                      from + "', '" + to +
                      "')"
                      " WHERE resource_manager = 'Heap' AND block_ref LIKE '%" +
                      runs_rel + "%'");
      const auto space = found.find(' ');
      return std::pair{std::stol(found.substr(0, space)), std::stol(found.substr(space + 1))};
    };
    const auto [small_records, small] = completion_wal(Json{{"pad", ""}});
    const auto [large_records, large] = completion_wal(Json{{"pad", std::string(1000, 'x')}});
    CAPTURE(small);
    CAPTURE(large);
    CHECK(small_records == 20);  // one update per run: the records were found
    CHECK(large_records == 20);
    CHECK(small > 0);
    CHECK(large < small + 50);
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'") ==
          "40");
  }

  // Rows deleted under flowreg's guards (by hand, by another program): a claimed task whose step
  // is no longer stored, whose run is gone, or whose dependency's step state is gone cannot be
  // run. Each fails alone, permanently, with the reason; the batch's other tasks are returned, by
  // work() and by claim().
  TEST_CASE("a claimed task whose step, run or dependency was deleted fails alone") {
    auto env = open_env("rs_unusable");
    const auto key = store_flow(env.store, flow("unusable", {step("only")}));
    const auto gone_key = store_flow(env.store, flow("unusable_gone", {step("only")}));
    const auto pair_key =
        store_flow(env.store, flow("unusable_pair", {step("a"), step("b", {"a"})}));
    std::vector<RunId> good;
    for (int i = 0; i < 3; ++i) good.push_back(start(env.store, key, i));
    const RunId no_run = start(env.store, key, 10);
    const RunId no_step = start(env.store, gone_key, 11);
    const RunId no_dep = start(env.store, pair_key, 12);
    // The pair's a completes (b becomes queued), then a's step state goes.
    auto a = claim(env.store, pair_key);
    REQUIRE(a.size() == 1);
    CHECK(complete(env.store, {{a[0].id, a[0].attempt, Json("a's output")}}).empty());
    sql_exec(env.conninfo,
             "SET session_replication_role = replica;"  // no trigger: past the guards
             "DELETE FROM flowreg.runs WHERE id = '" +
                 no_run +
                 "';"
                 "DELETE FROM flowreg.flow_steps WHERE flow_slug = 'unusable_gone';"
                 "DELETE FROM flowreg.step_states WHERE run_id = '" +
                 no_dep + "' AND step_slug = 'a'");
    const std::vector<FlowKey> flows{key, gone_key, pair_key};
    auto done = env.store.work("w1", {}, {}, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(done, flowreg::testing::failure_text(done));
    std::set<RunId> claimed_runs;
    for (const auto& t : done->claimed) claimed_runs.insert(t.run_id);
    CHECK(claimed_runs == std::set<RunId>(good.begin(), good.end()));
    CHECK(done->unusable.size() == 3);
    CHECK(done->rejected.empty());
    // Each failed permanently, with the reason; none comes back.
    const auto no_step_info = run_info(env.store, no_step);
    CHECK(no_step_info.status == RunStatus::failed);
    REQUIRE(no_step_info.error);
    CHECK(contains(*no_step_info.error,
                   "flowreg cannot run this task: its step 'only' of flow "
                   "'unusable_gone' version 'v1' is no longer stored"));
    const auto no_dep_info = run_info(env.store, no_dep);
    CHECK(no_dep_info.status == RunStatus::failed);
    REQUIRE(no_dep_info.error);
    CHECK(contains(*no_dep_info.error, "its input could not be read"));
    // No task of theirs is left leased (the run-less task has nothing to fail but itself).
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks WHERE run_id IN ('" + no_run +
                                    "', '" + no_step + "', '" + no_dep +
                                    "') AND status = 'started'") == "0");
    auto again = env.store.work("w1", {}, {}, flows, 10, std::nullopt);
    REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
    CHECK(again->claimed.empty());
    CHECK(again->unusable.empty());
    // The good tasks complete as usual.
    std::vector<Completion> batch;
    for (const auto& t : done->claimed) batch.push_back({t.id, t.attempt, t.input});
    CHECK(complete(env.store, batch).empty());
    for (const auto& id : good) CHECK(run_info(env.store, id).status == RunStatus::completed);
    // claim() does the same.
    const RunId later = start(env.store, key, 20);
    const RunId later_gone = start(env.store, key, 21);
    sql_exec(env.conninfo, "DELETE FROM flowreg.runs WHERE id = '" + later_gone + "'");
    auto tasks = claim(env.store, key);
    REQUIRE(tasks.size() == 1);
    CHECK(tasks[0].run_id == later);
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks WHERE run_id = '" + later_gone +
                                    "' AND status = 'started'") == "0");
    // A name of any size (5,000 characters, past what flow validation lets through): the reason
    // this path writes names it in a bounded form. (The run's error opens with the step's name as
    // stored, as for any failed step.)
    const std::string long_step(5000, 's');
    const auto long_key = store_flow(env.store, flow("unusable_long", {step(long_step)}));
    const RunId long_run = start(env.store, long_key, 30);
    sql_exec(env.conninfo,
             "SET session_replication_role = replica;"
             "DELETE FROM flowreg.flow_steps WHERE flow_slug = 'unusable_long'");
    CHECK(claim(env.store, long_key).empty());
    const auto long_info = run_info(env.store, long_run);
    CHECK(long_info.status == RunStatus::failed);
    REQUIRE(long_info.error);
    const auto reason = long_info.error->find("flowreg cannot run this task: its step 'sss");
    REQUIRE(reason != std::string::npos);
    CHECK(contains(long_info.error->substr(reason), "... (5000 bytes)' of flow 'unusable_long'"));
    CHECK(long_info.error->size() - reason < 400);
  }

  TEST_CASE("a completion after the lease expired and the task was re-claimed is rejected") {
    auto env = open_env("rs_fencing");
    auto key = store_flow(env.store, flow("fence", {step("a")}));
    auto run = start(env.store, key, Json::object());
    auto first = claim(env.store, key, 10, "w1");
    REQUIRE(first.size() == 1);
    CHECK(claim(env.store, key, 10, "w2").empty());  // leased
    // The lease ends now, after the session's previous claim: each claim looks for the leases
    // that expired since (a lease that expired before is the sweep's, tests/pg/long_reader_test).
    sql_exec(env.conninfo, "UPDATE flowreg.tasks SET lease_expires_at = now()");
    auto second = claim(env.store, key, 10, "w2");
    REQUIRE(second.size() == 1);
    CHECK(second[0].id == first[0].id);
    CHECK(second[0].attempt == 2);
    CHECK(complete(env.store, {{first[0].id, first[0].attempt, "late"}}) ==
          std::vector<TaskId>{first[0].id});
    CHECK(fail(env.store, {{first[0].id, first[0].attempt, "late"}}) ==
          std::vector<TaskId>{first[0].id});
    CHECK(complete(env.store, {{second[0].id, second[0].attempt, "fresh"}}).empty());
    // Recorded exactly once: a repeated completion is rejected and changes nothing.
    CHECK(complete(env.store, {{second[0].id, second[0].attempt, "again"}}) ==
          std::vector<TaskId>{second[0].id});
    auto info = run_info(env.store, run);
    CHECK(info.status == RunStatus::completed);
    CHECK(info.output == Json{{"a", "fresh"}});
  }

  TEST_CASE("an expired lease on the last attempt fails the step and the run") {
    auto env = open_env("rs_lease_exhausted");
    auto a = step("a");
    a.options.max_attempts = 1;
    a.options.timeout = Millis(1500);
    auto key = store_flow(env.store, flow("lastlease", {a}));
    auto run = start(env.store, key, Json::object());
    REQUIRE(claim(env.store, key).size() == 1);
    sql_exec(env.conninfo, "UPDATE flowreg.tasks SET lease_expires_at = now()");
    CHECK(claim(env.store, key).empty());
    auto info = run_info(env.store, run);
    CHECK(info.status == RunStatus::failed);
    CHECK(info.error ==
          "step 'a' failed permanently on attempt 1: lease expired: its worker stopped renewing "
          "it (the worker died, lost the database, or the step timed out)");
  }

  TEST_CASE("two claimers racing on two connections get each task exactly once") {
    auto env = open_env("rs_race");
    auto key = store_flow(env.store, flow("race", {step("a")}));
    auto second = RunStore::connect(env.conninfo);
    REQUIRE(second);
    RunStore* stores[2] = {&env.store, &*second};
    constexpr int kRounds = 40, kRuns = 24, kLimit = 16;
    std::vector<ClaimedTask> got[2];
    std::atomic<int> errors{0};
    std::barrier sync(3);
    {
      flowreg::test::Threads threads;
      for (int w = 0; w < 2; ++w)
        threads.spawn([&, w] {
          const std::string worker = "w" + std::to_string(w);
          for (int round = 0; round < kRounds; ++round) {
            sync.arrive_and_wait();  // released together
            auto tasks = stores[w]->claim(worker, std::span(&key, 1), kLimit);
            if (!tasks) ++errors;
            got[w] = tasks ? *tasks : std::vector<ClaimedTask>{};
            sync.arrive_and_wait();  // checked by the main thread
          }
        });
      for (int round = 0; round < kRounds; ++round) {
        std::vector<Json> inputs(kRuns, Json::object());
        auto runs = env.store.start_runs(key.slug, key.version, inputs);
        REQUIRE(runs);
        sync.arrive_and_wait();
        sync.arrive_and_wait();
        std::set<TaskId> ids;
        std::size_t total = 0;
        std::vector<Completion> batch;
        for (const auto& list : got)
          for (const auto& t : list) {
            ids.insert(t.id);
            ++total;
            batch.push_back({t.id, t.attempt, round});
          }
        CHECK(ids.size() == total);  // no task claimed twice
        auto rest = claim(env.store, key, 100, "main");
        CHECK(rest.size() + total == kRuns);
        for (const auto& t : rest) batch.push_back({t.id, t.attempt, round});
        CHECK(complete(env.store, batch).empty());
      }
    }
    CHECK(errors == 0);
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'") ==
          std::to_string(kRounds * kRuns));
    // Every task ran once and has left the queue.
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");
    CHECK(sql_one(env.conninfo,
                  "SELECT min(attempts) || ' ' || max(attempts) FROM "
                  "flowreg.steps") == "1 1");
  }

  TEST_CASE("prune deletes ended runs in batches of at most its batch, each whole, by one cutoff") {
    auto env = open_env("rs_prune_batches");
    auto one = store_flow(env.store, flow("prune_one", {step("only")}));
    auto two = store_flow(env.store, flow("prune_two", {step("a"), step("b", {"a"})}));
    for (int i = 0; i < 7; ++i) start(env.store, one, i);
    for (int i = 0; i < 6; ++i) start(env.store, two, i);
    const auto echo = [](const ClaimedTask& t) { return t.input; };
    CHECK(drain(env.store, one, echo).size() == 7);
    CHECK(drain(env.store, two, echo).size() == 12);
    const auto cancelled = start(env.store, two, 99);
    auto c = env.store.cancel_run(cancelled);
    REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
    const auto running = start(env.store, one, 100);
    const auto count = [&](const std::string& table) {
      return sql_one(env.conninfo, "SELECT count(*) FROM flowreg." + table);
    };
    REQUIRE(count("runs") == "15");
    // prune_two is a chain (migration 0017): a state per step ended, 2 for each of the 6 completed
    // runs, and the cancelled run's a (its b never started: the view shows it, none is stored).
    REQUIRE(count("step_states") == "13");
    REQUIRE(count("tasks") == "1");  // the running run's

    // The SQL function deletes at most its limit, each run with its step states.
    CHECK(sql_one(env.conninfo, "SELECT flowreg.prune(now(), 4)") == "4");
    CHECK(count("runs") == "11");
    CHECK(sql_one(env.conninfo,
                  "SELECT count(*) FROM flowreg.step_states s WHERE NOT EXISTS"
                  " (SELECT FROM flowreg.runs r WHERE r.id = s.run_id)") == "0");

    // RunStore goes on batch after batch (3, 3, 3, 1) until one is not full.
    auto pruned = env.store.prune(Millis(0), 3);
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 10);
    CHECK(count("runs") == "1");
    CHECK(count("step_states") == "0");
    CHECK(count("tasks") == "1");
    CHECK(run_info(env.store, running).status == RunStatus::started);
    auto again = env.store.prune(Millis(0));
    REQUIRE(again);
    CHECK(*again == 0);

    // Runs ending after the cutoff stay: a run is pruned only once it ended before it.
    auto task = claim(env.store, one, 1);
    REQUIRE(task.size() == 1);
    CHECK(complete(env.store, {{task[0].id, task[0].attempt, 1}}).empty());
    auto young = env.store.prune(Millis(60'000), 1);
    REQUIRE(young);
    CHECK(*young == 0);
    CHECK(count("runs") == "1");

    auto bad = env.store.prune(Millis(0), 0);
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == Errc::invalid_argument);
    CHECK(count("runs") == "1");
  }

  TEST_CASE("cancel_run cancels queued tasks and rejects in-flight completions") {
    auto env = open_env("rs_cancel");
    auto key = store_flow(env.store, flow("cancel", {step("a"), step("b")}));
    auto run = start(env.store, key, Json::object());
    auto tasks = claim(env.store, key, 1);
    REQUIRE(tasks.size() == 1);
    auto cancelled = env.store.cancel_run(run);
    REQUIRE(cancelled);
    CHECK(*cancelled);
    CHECK(run_info(env.store, run).status == RunStatus::cancelled);
    CHECK(claim(env.store, key).empty());
    CHECK(complete(env.store, {{tasks[0].id, tasks[0].attempt, 1}}) ==
          std::vector<TaskId>{tasks[0].id});
    // Its tasks left the queue; the claimed one's attempt stays counted in its step.
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");
    CHECK(sql_one(env.conninfo,
                  "SELECT string_agg(status || ' ' || attempts, ',' ORDER BY step_slug = '" +
                      tasks[0].step_slug + "') FROM flowreg.steps") == "cancelled 0,cancelled 1");
    auto again = env.store.cancel_run(run);
    REQUIRE(again);
    CHECK_FALSE(*again);

    // A one-step flow's runs: the task of each (solo, migration 0013) is found through its run's
    // task_id, to show its attempts and to leave the queue.
    auto one = store_flow(env.store, flow("cancel_one", {step("only")}));
    const auto held = start(env.store, one, 1);
    const auto waiting = start(env.store, one, 2);
    auto one_tasks = claim(env.store, one, 1);
    REQUIRE(one_tasks.size() == 1);
    REQUIRE(one_tasks[0].run_id == held);
    const auto steps_text = [&](const RunId& r) {
      auto steps = env.store.run_steps(r);
      REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
      std::string out;
      for (const auto& st : *steps)
        out += st.slug + " " + st.status + " " + std::to_string(st.attempts) + ";";
      return out;
    };
    CHECK(steps_text(held) == "only started 1;");
    CHECK(steps_text(waiting) == "only started 0;");
    for (const auto& r : {held, waiting}) {
      auto c = env.store.cancel_run(r);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
    }
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");
    CHECK(complete(env.store, {{one_tasks[0].id, one_tasks[0].attempt, 1}}) ==
          std::vector<TaskId>{one_tasks[0].id});
    CHECK(steps_text(held) == "only cancelled 1;");
    CHECK(steps_text(waiting) == "only cancelled 0;");

    auto missing = env.store.cancel_run("00000000-0000-0000-0000-000000000000");
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == Errc::not_found);
    auto malformed = env.store.cancel_run("not-a-uuid");
    REQUIRE_FALSE(malformed);
    CHECK(malformed.error().code == Errc::invalid_argument);
  }

  TEST_CASE("retry_run starts a linked run with the same input and flow version") {
    auto env = open_env("rs_retry_run");
    auto key = store_flow(env.store, flow("retry", {step("a")}));
    auto run = start(env.store, key, Json{{"order", 7}});
    auto running = env.store.retry_run(run);
    REQUIRE_FALSE(running);
    CHECK(running.error().code == Errc::invalid_argument);
    auto tasks = claim(env.store, key);
    REQUIRE(tasks.size() == 1);
    CHECK(fail(env.store, {{tasks[0].id, 1, "down", true}}).empty());
    // A new version of the flow is stored meanwhile: the retry keeps the original's.
    store_flow(env.store, flow("retry", {step("a"), step("b", {"a"})}), "v2");
    auto retried = env.store.retry_run(run);
    REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
    CHECK(*retried != run);
    auto info = run_info(env.store, *retried);
    CHECK(info.retry_of == run);
    CHECK(info.input == Json{{"order", 7}});
    CHECK(info.flow_version == "v1");
    CHECK(info.status == RunStatus::started);
    auto again = claim(env.store, key);
    REQUIRE(again.size() == 1);
    CHECK(again[0].run_id == *retried);
    CHECK(again[0].input == Json{{"order", 7}});
    auto missing = env.store.retry_run("00000000-0000-0000-0000-000000000000");
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == Errc::not_found);
  }

  TEST_CASE(
      "retry from the failed step keeps the completed steps and their map step's outputs and runs "
      "only the rest") {
    auto env = open_env("rs_retry_from_failed");
    auto key =
        store_flow(env.store, flow("rf_fan", {step("split"), step("each", {"split"}, StepKind::map),
                                              step("join", {"each"}), step("last", {"join"})}));
    // A step's status, attempts and output, by slug.
    const auto steps_of = [&](const RunId& r) {
      auto steps = env.store.run_steps(r);
      REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
      std::map<std::string, std::string> out;
      for (const auto& st : *steps)
        out[st.slug] = st.status + " " + std::to_string(st.attempts) + " " +
                       (st.output ? st.output->dump() : std::string("-"));
      return out;
    };
    const auto run = start(env.store, key, Json{{"n", 3}});
    auto split = claim(env.store, key);
    REQUIRE(split.size() == 1);
    CHECK(complete(env.store, {{split[0].id, 1, Json::array({1, 2, 3})}}).empty());
    auto each = claim(env.store, key);
    REQUIRE(each.size() == 3);
    std::vector<Completion> outputs;
    for (const auto& t : each) outputs.push_back({t.id, 1, t.input.get<int>() * 10});
    CHECK(complete(env.store, outputs).empty());
    auto join = claim(env.store, key);
    REQUIRE(join.size() == 1);
    REQUIRE(join[0].step_slug == "join");
    CHECK(fail(env.store, {{join[0].id, 1, "down", true}}).empty());
    REQUIRE(run_info(env.store, run).status == RunStatus::failed);
    const auto failed_steps = steps_of(run);

    auto retried = env.store.retry_run(run, fd::RetryFrom::failed_step);
    REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
    auto info = run_info(env.store, *retried);
    CHECK(info.retry_of == run);
    CHECK(info.input == Json{{"n", 3}});
    CHECK(info.flow_version == "v1");
    CHECK(info.status == RunStatus::started);
    // The completed steps are completed with their outputs, with no attempt of their own; the
    // failed step starts again, its dependant waits for it.
    const std::map<std::string, std::string> expected{{"split", "completed 0 [1,2,3]"},
                                                      {"each", "completed 0 [10,20,30]"},
                                                      {"join", "started 0 -"},
                                                      {"last", "created 0 -"}};
    CHECK(steps_of(*retried) == expected);
    // Only the failed step's task is there to claim, with the copied map step's outputs as input.
    auto again = claim(env.store, key);
    REQUIRE(again.size() == 1);
    CHECK(again[0].run_id == *retried);
    CHECK(again[0].step_slug == "join");
    CHECK(again[0].input == Json{{"each", Json::array({10, 20, 30})}});
    CHECK(complete(env.store, {{again[0].id, 1, "joined"}}).empty());
    auto last = claim(env.store, key);
    REQUIRE(last.size() == 1);
    CHECK(last[0].step_slug == "last");
    CHECK(last[0].input == Json{{"join", "joined"}});
    CHECK(complete(env.store, {{last[0].id, 1, "end"}}).empty());
    CHECK(claim(env.store, key).empty());
    info = run_info(env.store, *retried);
    CHECK(info.status == RunStatus::completed);
    CHECK(info.output == Json{{"last", "end"}});
    const std::map<std::string, std::string> finished{{"split", "completed 0 [1,2,3]"},
                                                      {"each", "completed 0 [10,20,30]"},
                                                      {"join", "completed 1 \"joined\""},
                                                      {"last", "completed 1 \"end\""}};
    CHECK(steps_of(*retried) == finished);
    // The failed run is as it was.
    CHECK(run_info(env.store, run).status == RunStatus::failed);
    CHECK(steps_of(run) == failed_steps);

    // A run failed within its map step: that step runs again whole (its tasks were dropped), the
    // step before it does not.
    const auto run2 = start(env.store, key, Json{{"n", 2}});
    split = claim(env.store, key);
    REQUIRE(split.size() == 1);
    CHECK(complete(env.store, {{split[0].id, 1, Json::array({4, 5})}}).empty());
    each = claim(env.store, key);
    REQUIRE(each.size() == 2);
    CHECK(complete(env.store, {{each[0].id, 1, 40}}).empty());
    CHECK(fail(env.store, {{each[1].id, 1, "bad element", true}}).empty());
    REQUIRE(run_info(env.store, run2).status == RunStatus::failed);
    auto retried2 = env.store.retry_run(run2, fd::RetryFrom::failed_step);
    REQUIRE_MESSAGE(retried2, flowreg::testing::failure_text(retried2));
    auto each2 = claim(env.store, key);
    REQUIRE(each2.size() == 2);
    std::set<std::string> seen;
    for (const auto& t : each2) {
      CHECK(t.run_id == *retried2);
      seen.insert(t.step_slug + " " + t.input.dump());
    }
    CHECK(seen == std::set<std::string>{"each 4", "each 5"});
    CHECK(steps_of(*retried2).at("split") == "completed 0 [4,5]");
  }

  TEST_CASE("retry from the failed step of a chain runs its failed step and what follows only") {
    auto env = open_env("rs_retry_from_failed_chain");
    auto key = store_flow(env.store, flow("rf_chain", {step("a"), step("b", {"a"}),
                                                       step("c", {"b"}), step("d", {"c"})}));
    const auto run = start(env.store, key, Json{{"order", 1}});
    for (const char* slug : {"a", "b"}) {
      auto t = claim(env.store, key);
      REQUIRE(t.size() == 1);
      REQUIRE(t[0].step_slug == slug);
      CHECK(complete(env.store, {{t[0].id, 1, Json{{"from", slug}}}}).empty());
    }
    auto c = claim(env.store, key);
    REQUIRE(c.size() == 1);
    REQUIRE(c[0].step_slug == "c");
    CHECK(fail(env.store, {{c[0].id, 1, "down", true}}).empty());
    REQUIRE(run_info(env.store, run).status == RunStatus::failed);

    auto retried = env.store.retry_run(run, fd::RetryFrom::failed_step);
    REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
    // The chain's layout (migration 0017): a step state per completed step, copied; the task of
    // the failed step, chained.
    CHECK(sql_one(env.conninfo, "SELECT chained FROM flowreg.runs WHERE id = '" + *retried + "'") ==
          "t");
    CHECK(
        sql_one(env.conninfo,
                "SELECT string_agg(step_slug || ' ' || status || ' ' || attempts || ' ' || "
                "output::text, '; ' ORDER BY step_slug) FROM flowreg.step_states WHERE run_id = '" +
                    *retried + "'") ==
        "a completed 0 {\"from\": \"a\"}; b completed 0 {\"from\": \"b\"}");
    CHECK(sql_one(env.conninfo,
                  "SELECT string_agg(step_slug || ' ' || chained || ' ' || status, '; ') FROM "
                  "flowreg.tasks WHERE run_id = '" +
                      *retried + "'") == "c true queued");
    auto again = claim(env.store, key);
    REQUIRE(again.size() == 1);
    CHECK(again[0].run_id == *retried);
    CHECK(again[0].step_slug == "c");
    CHECK(again[0].input == Json{{"b", Json{{"from", "b"}}}});
    CHECK(complete(env.store, {{again[0].id, 1, "c done"}}).empty());
    auto d = claim(env.store, key);
    REQUIRE(d.size() == 1);
    CHECK(d[0].step_slug == "d");
    CHECK(d[0].input == Json{{"c", "c done"}});
    CHECK(complete(env.store, {{d[0].id, 1, "d done"}}).empty());
    auto info = run_info(env.store, *retried);
    CHECK(info.status == RunStatus::completed);
    CHECK(info.output == Json{{"d", "d done"}});
    auto steps = env.store.run_steps(*retried);
    REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
    std::string text;
    for (const auto& st : *steps)
      text += st.slug + " " + st.status + " " + std::to_string(st.attempts) + ";";
    CHECK(text == "a completed 0;b completed 0;c completed 1;d completed 1;");
  }

  TEST_CASE(
      "retry from the failed step of a run with no completed step is a plain retry, in its "
      "flow's layout") {
    auto env = open_env("rs_retry_from_failed_none");
    SUBCASE("a one-step flow") {
      auto key = store_flow(env.store, flow("rf_one", {step("only")}));
      const auto run = start(env.store, key, 5);
      auto t = claim(env.store, key);
      REQUIRE(t.size() == 1);
      CHECK(fail(env.store, {{t[0].id, 1, "down", true}}).empty());
      auto retried = env.store.retry_run(run, fd::RetryFrom::failed_step);
      REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
      // Migrations 0012 and 0013: no step state, the run names its solo task.
      CHECK(sql_one(env.conninfo,
                    "SELECT r.attempts || ' ' || r.retry_of || ' ' || t.solo || ' ' || "
                    "(SELECT count(*) FROM flowreg.step_states s WHERE s.run_id = r.id) FROM "
                    "flowreg.runs r JOIN flowreg.tasks t ON t.id = r.task_id WHERE r.id = '" +
                        *retried + "'") == "0 " + run + " true 0");
      auto again = claim(env.store, key);
      REQUIRE(again.size() == 1);
      CHECK(again[0].run_id == *retried);
      CHECK(again[0].input == 5);
    }
    SUBCASE("a chain failed at its root") {
      auto key = store_flow(env.store, flow("rf_root", {step("a"), step("b", {"a"})}));
      const auto run = start(env.store, key, 6);
      auto t = claim(env.store, key);
      REQUIRE(t.size() == 1);
      CHECK(fail(env.store, {{t[0].id, 1, "down", true}}).empty());
      auto retried = env.store.retry_run(run, fd::RetryFrom::failed_step);
      REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
      CHECK(sql_one(env.conninfo,
                    "SELECT chained FROM flowreg.runs WHERE id = '" + *retried + "'") == "t");
      auto again = claim(env.store, key);
      REQUIRE(again.size() == 1);
      CHECK(again[0].run_id == *retried);
      CHECK(again[0].step_slug == "a");
      CHECK(again[0].input == 6);
    }
  }

  TEST_CASE(
      "retry from the failed step refuses a run that is missing, running, completed or "
      "cancelled, and starts nothing") {
    auto env = open_env("rs_retry_from_failed_refused");
    auto key = store_flow(env.store, flow("rf_refused", {step("a"), step("b", {"a"})}));
    const auto running = start(env.store, key, 1);
    const auto cancelled = start(env.store, key, 2);
    auto t = claim(env.store, key, 1);
    REQUIRE(t.size() == 1);
    REQUIRE(t[0].run_id == running);
    CHECK(complete(env.store, {{t[0].id, 1, "a"}}).empty());
    auto c = env.store.cancel_run(cancelled);
    REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
    const auto runs_before = sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs");

    auto missing =
        env.store.retry_run("00000000-0000-0000-0000-000000000000", fd::RetryFrom::failed_step);
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == Errc::not_found);
    auto still = env.store.retry_run(running, fd::RetryFrom::failed_step);
    REQUIRE_FALSE(still);
    CHECK(still.error().code == Errc::invalid_argument);
    CHECK(contains(still.error().message, "is still running"));
    auto was_cancelled = env.store.retry_run(cancelled, fd::RetryFrom::failed_step);
    REQUIRE_FALSE(was_cancelled);
    CHECK(was_cancelled.error().code == Errc::invalid_argument);
    CHECK(contains(was_cancelled.error().message, "is cancelled, not failed"));
    auto b = claim(env.store, key);
    REQUIRE(b.size() == 1);
    CHECK(complete(env.store, {{b[0].id, 1, "b"}}).empty());
    REQUIRE(run_info(env.store, running).status == RunStatus::completed);
    auto done = env.store.retry_run(running, fd::RetryFrom::failed_step);
    REQUIRE_FALSE(done);
    CHECK(done.error().code == Errc::invalid_argument);
    CHECK(contains(done.error().message, "is completed, not failed"));
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs") == runs_before);
    // A plain retry of either is still allowed.
    auto plain = env.store.retry_run(cancelled);
    CHECK_MESSAGE(plain, flowreg::testing::failure_text(plain));
  }

  TEST_CASE(
      "a second start with the same idempotency key and input returns the first run; another "
      "input is a conflict") {
    auto env = open_env("rs_idempotency");
    auto key = store_flow(env.store, flow("idem", {step("a")}));
    auto other = store_flow(env.store, flow("idem2", {step("a")}));
    auto first = start(env.store, key, 1, key_opt("order-1"));
    CHECK(start(env.store, key, 1, key_opt("order-1")) == first);
    auto conflict = env.store.start_run(key.slug, key.version, 2, key_opt("order-1"));
    REQUIRE_FALSE(conflict);
    CHECK(conflict.error().code == Errc::invalid_argument);
    CHECK(conflict.error().message.find("conflict: idempotency key 'order-1' was already used by "
                                        "run " +
                                        first) != std::string::npos);
    CHECK(start(env.store, key, 1, key_opt("order-2")) != first);
    CHECK(start(env.store, other, 1, key_opt("order-1")) != first);
    CHECK(run_info(env.store, first).input == 1);
    CHECK(run_info(env.store, first).idempotency_key == "order-1");
    CHECK(claim(env.store, key).size() == 2);
    auto empty = env.store.start_run(key.slug, key.version, 1, key_opt(""));
    REQUIRE_FALSE(empty);
    CHECK(empty.error().code == Errc::invalid_argument);
  }

  TEST_CASE("prune deletes ended runs older than the duration with their steps and tasks") {
    auto env = open_env("rs_prune");
    auto key = store_flow(env.store, flow("prune", {step("a"), step("b", {"a"})}));
    std::vector<RunId> runs;
    for (int i = 0; i < 3; ++i) runs.push_back(start(env.store, key, i));
    CHECK(drain(env.store, key, [](const ClaimedTask&) { return 1; }).size() == 6);
    auto fourth = start(env.store, key, 4);  // stays started
    sql_exec(env.conninfo,
             "UPDATE flowreg.runs SET finished_at = now() - interval '2 hours', created_at = "
             "now() - interval '3 hours' WHERE id IN ('" +
                 runs[0] + "', '" + runs[1] + "')");
    auto pruned = env.store.prune(Millis(3600'000));
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 2);
    auto gone = env.store.get_run(runs[0]);
    REQUIRE(gone);
    CHECK_FALSE(gone->has_value());
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs") == "2");
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.steps WHERE run_id IN ('" + runs[0] +
                                    "', '" + runs[1] + "')") == "0");
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks WHERE run_id IN ('" + runs[0] +
                                    "', '" + runs[1] + "')") == "0");
    auto everything = env.store.prune(Millis(0));
    REQUIRE(everything);
    CHECK(*everything == 1);  // run 2 (ended just now); the started one stays
    CHECK(run_info(env.store, fourth).status == RunStatus::started);

    // Tasks an ended run still has (none, unless an earlier release left them) go with it: by run,
    // and a one-step flow's solo task by its run's task_id (migration 0013).
    auto one = store_flow(env.store, flow("prune_one", {step("only")}));
    const auto left = start(env.store, one, 5);
    const auto kept = start(env.store, one, 6);
    sql_exec(env.conninfo,
             "UPDATE flowreg.runs SET status = 'cancelled', finished_at = now() - "
             "interval '2 hours', created_at = now() - interval '3 hours' WHERE id "
             "IN ('" +
                 left + "', '" + fourth + "')");
    REQUIRE(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "3");
    auto old_ones = env.store.prune(Millis(3600'000));
    REQUIRE_MESSAGE(old_ones, flowreg::testing::failure_text(old_ones));
    CHECK(*old_ones == 2);
    CHECK(sql_one(env.conninfo, "SELECT string_agg(run_id::text, ',') FROM flowreg.tasks") == kept);
  }

  // _claim, _lock_runs_of, _complete_locked, _account_steps, _fail_locked and _fail_runs keep one
  // generic plan per session, made at their first call and kept. A worker connection that made
  // them while the tables were empty must still walk indexes once the tables are full: counted
  // with the server's per-table scan counters around calls made on one connection that first ran
  // them on near-empty tables. (Other statements keep custom plans, which may legitimately scan a
  // small table whole.)
  TEST_CASE("the generic plans of the hot functions, made on empty tables, walk indexes later") {
    auto env = open_env("rs_plans");
    auto chain = store_flow(env.store, flow("plans", {step("a"), step("b", {"a"})}));
    const std::string flows = R"([{"slug": "plans", "version": "v1"}])";
    pqxx::connection worker(env.conninfo);
    // Each call in a transaction rolled back: the plans stay, the rows do not change.
    // `verify`: also count the tasks of b the calls created (a query of this test's own, whose
    // plan may read many rows: not in the measured calls).
    const auto call_all = [&](int n, bool verify) {
      pqxx::work tx(worker);
      // Of the n tasks claimed, `done` complete; of the others, every other one fails for good
      // (its run fails), the rest fail with attempts left (queued again).
      const int done = n - n / 2;
      auto claimed = tx.exec_params(
          "WITH c AS (SELECT row_number() OVER () AS i, * "
          "           FROM flowreg._claim('plans', $1::jsonb, $2, 10000)) "
          "SELECT jsonb_agg(jsonb_build_object('id', id, 'attempt', attempt, 'output', 1)) "
          "         FILTER (WHERE i <= $3)::text, "
          "       coalesce(jsonb_agg(jsonb_build_object('id', id, 'attempt', attempt, "
          "                          'error', 'no', 'permanent', i % 2 = 0)) "
          "                FILTER (WHERE i > $3), '[]')::text, "
          "       array_agg(id)::text, array_agg(run_id) FILTER (WHERE i <= $3)::text, count(*) "
          "FROM c",
          flows, n, done);
      REQUIRE(claimed.at(0).at(4).as<int>() == n);
      const auto completions = claimed.at(0).at(0).as<std::string>();
      const auto failures = claimed.at(0).at(1).as<std::string>();
      const auto ids = claimed.at(0).at(2).as<std::string>();
      const auto runs = claimed.at(0).at(3).as<std::string>();
      tx.exec_params("SELECT flowreg._lock_runs_of($1::bigint[])", ids);
      auto completed = tx.exec_params(
          "SELECT cardinality((flowreg._complete_locked($1::jsonb)).accepted)", completions);
      REQUIRE(completed.at(0).at(0).as<int>() == done);
      auto failed = tx.exec_params("SELECT cardinality(flowreg._fail_locked($1::jsonb))", failures);
      REQUIRE(failed.at(0).at(0).as<int>() == n - done);
      // b, a single step, is started by _account_steps itself.
      if (verify)
        CHECK(tx.exec_params("SELECT count(*) FROM flowreg.tasks WHERE run_id = ANY ($1::uuid[]) "
                             "AND step_slug = 'b' AND status = 'queued'",
                             runs)
                  .at(0)
                  .at(0)
                  .as<int>() == done);
      tx.abort();
    };
    start(env.store, chain, 0);
    start(env.store, chain, 1);
    call_all(2, true);  // the plans are made here: one completion, one failure for good

    std::vector<Json> inputs(1000, Json(1));
    for (int i = 0; i < 10; ++i) REQUIRE(env.store.start_runs(chain.slug, chain.version, inputs));
    const auto scans = [&] {
      pqxx::nontransaction tx(worker);
      tx.exec("SELECT pg_stat_force_next_flush()");  // this backend's counts, flushed when idle
      pqxx::connection reader(env.conninfo);
      pqxx::nontransaction rtx(reader);
      auto r = rtx.exec(
          "SELECT sum(seq_scan), sum(idx_scan), sum(idx_tup_fetch) FROM pg_stat_user_tables "
          "WHERE schemaname = 'flowreg' "
          "AND relname IN ('runs', 'tasks', 'step_states', 'flow_steps', 'flow_deps')");
      return std::array{r.at(0).at(0).as<long>(), r.at(0).at(1).as<long>(),
                        r.at(0).at(2).as<long>()};
    };
    constexpr int kCalls = 5, kTasks = 64;
    call_all(kTasks, true);
    const auto before = scans();
    for (int i = 0; i < kCalls; ++i) call_all(kTasks, false);
    const auto after = scans();
    CHECK(after[1] > before[1]);   // the counters move...
    CHECK(after[0] == before[0]);  // ...no call scanned a table whole...
    // ...nor walked a whole index: a task's cycle fetches a few rows by key (its task, run, step
    // states, flow steps), not a share of the 10,000 runs' rows.
    const double fetched = static_cast<double>(after[2] - before[2]) / (kCalls * kTasks);
    INFO("rows fetched by index per task: " << fetched);
    CHECK(fetched < 16);
  }

  TEST_CASE("a run stays pinned to its version while a new version is stored") {
    auto env = open_env("rs_versions");
    auto v1 = store_flow(env.store, flow("pinned", {step("a")}), "v1");
    auto old_run = start(env.store, v1, 1);
    auto v2 = store_flow(env.store, flow("pinned", {step("a"), step("b", {"a"})}), "v2");
    auto new_run = start(env.store, v2, 2);
    // Storing v1 again is a no-op; a different definition under v1 is refused.
    auto again = env.store.upsert_flow(flow("pinned", {step("a")}), "v1");
    REQUIRE(again);
    CHECK_FALSE(*again);
    auto changed = env.store.upsert_flow(flow("pinned", {step("a"), step("c", {"a"})}), "v1");
    REQUIRE_FALSE(changed);
    CHECK(changed.error().code == Errc::invalid_argument);
    // A worker serving v1 gets only v1's tasks.
    auto old_tasks = claim(env.store, v1);
    REQUIRE(old_tasks.size() == 1);
    CHECK(old_tasks[0].run_id == old_run);
    CHECK(old_tasks[0].flow_version == "v1");
    CHECK(complete(env.store, {{old_tasks[0].id, old_tasks[0].attempt, "a1"}}).empty());
    auto info = run_info(env.store, old_run);
    CHECK(info.status == RunStatus::completed);
    CHECK(info.output == Json{{"a", "a1"}});
    auto new_tasks = drain(env.store, v2, [](const ClaimedTask& t) { return t.step_slug; });
    CHECK(new_tasks.size() == 2);
    CHECK(run_info(env.store, new_run).output == Json{{"b", "b"}});
  }

  TEST_CASE(
      "regression: the same flow version written in another valid order was refused as a "
      "different definition (independent steps swapped, dependencies listed the other way)") {
    auto env = open_env("rs_same_shape");
    const auto written = flow("diamond", {step("a"), step("b"), step("c", {"a", "b"})});
    REQUIRE(flow_version(written) ==
            flow_version(flow("diamond", {step("b"), step("a"), step("c", {"b", "a"})})));
    const std::string version = flow_version(written);
    REQUIRE(env.store.upsert_flow(written, version));
    auto reordered = env.store.upsert_flow(
        flow("diamond", {step("c", {"b", "a"}), step("b"), step("a")}), version);
    REQUIRE_MESSAGE(reordered, flowreg::testing::failure_text(reordered));
    // Still refused: a different shape under the same version.
    auto changed =
        env.store.upsert_flow(flow("diamond", {step("a"), step("b"), step("c", {"a"})}), version);
    REQUIRE_FALSE(changed);
    CHECK(changed.error().code == Errc::invalid_argument);
  }

  TEST_CASE("starting a run of a flow version that is not stored is not_found") {
    auto env = open_env("rs_unknown_flow");
    auto run = env.store.start_run("nope", "v1", 1);
    REQUIRE_FALSE(run);
    CHECK(run.error().code == Errc::not_found);
    CHECK(contains(run.error().message, "flow 'nope' version 'v1' is not stored"));
  }

  TEST_CASE("start_runs refused by the server names the input it cannot store; none starts") {
    auto env = open_env("rs_refused_input");
    auto key = store_flow(env.store, flow("refused", {step("a")}));
    // Each bad input is made where it is used, by moves: building the deep one by copies copied
    // each level again at every level above it.
    const auto bad_input = [](int which) {
      if (which == 0) return Json{{"s", std::string("a\0b", 3)}};
      if (which == 1) return Json{{std::string("k\0", 2), 1}};
      // Nested 20,000 deep: more than the server's stack takes, and than kMaxStoredDepth.
      return nested_array(20'000);
    };
    for (const auto& [which, reason] : {std::pair{0, "holds a string with the character U+0000"},
                                        std::pair{1, "holds a key with the character U+0000"},
                                        std::pair{2, "nests deeper than 5000 levels"}}) {
      // 4 inputs: one call of start_runs; kCopiedStartMin + 1: by COPY.
      for (const std::size_t n : {std::size_t{4}, kCopiedStartMin + 1}) {
        CAPTURE(reason);
        CAPTURE(n);
        std::vector<Json> inputs;
        for (std::size_t i = 0; i < n; ++i)
          inputs.push_back(i == 2 ? bad_input(which) : Json{{"i", i}});
        auto started = env.store.start_runs(key.slug, key.version, inputs);
        REQUIRE_FALSE(started);
        CHECK(started.error().code == Errc::invalid_argument);
        const std::string& message = started.error().message;
        CAPTURE(message);
        CHECK(contains(message, fmt::format("starting {} runs of flow 'refused' version 'v1': "
                                            "input 2 (of {}",
                                            n, n)));
        CHECK(contains(message, std::string("the input ") + reason));
        CHECK(contains(message, "no run started"));
      }
    }
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs") == "0");
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");
    // A batch without such an input starts whole (by COPY), invalid UTF-8 (in a string and in a
    // key) and 4 MiB strings included: each bad byte is stored as U+FFFD, as start_run stores it.
    std::vector<Json> fine_inputs{Json{{"i", 0}},
                                  Json{{"s", "bad \xff bytes"}, {"k\xc3", "truncated"}},
                                  Json{{"big", std::string(4 << 20, 'x')}}};
    fine_inputs.resize(kCopiedStartMin, Json::object());
    auto fine = env.store.start_runs(key.slug, key.version, fine_inputs);
    REQUIRE_MESSAGE(fine, flowreg::testing::failure_text(fine));
    REQUIRE(fine->size() == kCopiedStartMin);
    CHECK(sql_one(env.conninfo,
                  "SELECT input::text FROM flowreg.runs WHERE id = '" + (*fine)[1] + "'") ==
          "{\"s\": \"bad \xEF\xBF\xBD bytes\", \"k\xEF\xBF\xBD\": \"truncated\"}");
    CHECK(sql_one(env.conninfo, "SELECT length(input->>'big') FROM flowreg.runs WHERE id = '" +
                                    (*fine)[2] + "'") == std::to_string(4 << 20));
  }

  // start_run (RunStore::start_run without a key or a retried run) has a short path for a run of a
  // one-step flow; every other start goes on to start_runs inside it. Either way the rows are
  // those start_runs writes.
  TEST_CASE("start_run writes the rows start_runs writes, by its short path or through it") {
    auto env = open_env("rs_start_one");
    const auto one = store_flow(env.store, flow("one", {step("a")}));
    const auto two = store_flow(env.store, flow("two", {step("a"), step("b", {"a"})}));
    const auto mapped = store_flow(env.store, flow("mapped", {step("m", {}, StepKind::map)}));
    // A run's rows with what differs between two runs left out (its own id, times and input),
    // as row literals: a NULL shows as nothing between two commas, no rows as "-".
    const auto rows_of = [&](const std::string& run) {
      const std::string id = "'" + run + "'";
      return sql_one(
          env.conninfo,
          "SELECT concat_ws(' / ', coalesce((SELECT row(flow_slug, flow_version, status, output,"
          " error, remaining_leaves, idempotency_key, retry_of, finished_at, attempts,"
          " worker_id, task_id = ANY (ARRAY(SELECT t.id FROM flowreg.tasks t WHERE t.run_id = "
          "r.id)))::text"
          " FROM flowreg.runs r WHERE id = " +
              id +
              "), '-'), coalesce((SELECT string_agg(row(step_slug, step_index, kind, status,"
              " remaining_deps, remaining_tasks, task_count, output, error, started_at IS NULL,"
              " finished_at, attempts, worker_id)::text, ';' ORDER BY step_index) FROM"
              " flowreg.step_states WHERE run_id = " +
              id +
              "), '-'), coalesce((SELECT string_agg(row(step_slug, task_index, flow_slug,"
              " flow_version, status, attempt, num_nulls(max_attempts, base_delay_ms,"
              " max_delay_ms, created_at), timeout_ms, input, output, error, error_at,"
              " worker_id, lease_expires_at, started_at, finished_at, available_at <= now(),"
              " solo)::text, ';' ORDER BY"
              " step_slug, task_index) FROM flowreg.tasks WHERE run_id = " +
              id + "), '-'))");
    };
    const auto start_runs_one = [&](const FlowKey& key, const Json& input) {
      auto runs = env.store.start_runs(key.slug, key.version, std::vector<Json>{input});
      REQUIRE_MESSAGE(runs, flowreg::testing::failure_text(runs));
      REQUIRE(runs->size() == 1);
      return runs->front();
    };
    for (const FlowKey* key : {&one, &two, &mapped}) {
      CAPTURE(key->slug);
      const Json input = key == &mapped ? Json::array({1, 2, 3}) : Json{{"n", 1}};
      const RunId by_start_run = start(env.store, *key, input);
      const RunId by_start_runs = start_runs_one(*key, input);
      const std::string rows = rows_of(by_start_run);
      CHECK(rows == rows_of(by_start_runs));
      // The run holds the input (a single step's task stores none: the claim reads the run's).
      CHECK(sql_one(env.conninfo, "SELECT input = '" + input.dump() +
                                      "'::jsonb FROM flowreg.runs WHERE id = '" + by_start_run +
                                      "'") == "t");
      if (key == &one) {
        // The one-step flow's layout (migration 0012): attempts 0 in the run, no step state, one
        // queued task with no input of its own, solo and named by the run's task_id (migration
        // 0013), with a copy of its step's timeout and no other option (4: the columns migration
        // 0014 left unused are NULL).
        CHECK(rows ==
              "(one,v1,started,,,1,,,,0,,t) / - / "
              "(a,0,one,v1,queued,0,4,60000,,,,,,,,,t,t)");
      } else {
        // The others' tasks are found by run (tasks_by_run): the run names none, none is solo.
        CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs WHERE id = '" +
                                        by_start_run + "' AND task_id IS NULL") == "1");
        CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks WHERE run_id = '" +
                                        by_start_run + "' AND solo") == "0");
      }
    }
    // Which path each took: only the one-step flow's start stays out of start_runs.
    {
      pqxx::connection conn(env.conninfo);
      pqxx::work tx(conn);
      tx.exec0("SET LOCAL track_functions = 'pl'");
      const auto calls_after = [&](const FlowKey& key) {
        tx.exec1("SELECT count(*) FROM flowreg.start_run('" + key.slug + "', '" + key.version +
                 "', '[1]')");
        return tx
            .exec1(
                "SELECT string_agg(funcname || ' ' || calls, ', ' ORDER BY funcname) FROM "
                "pg_stat_xact_user_functions WHERE funcname IN ('start_run', 'start_runs')")[0]
            .as<std::string>();
      };
      CHECK(calls_after(one) == "start_run 1");
      CHECK(calls_after(two) == "start_run 2, start_runs 1");
      CHECK(calls_after(mapped) == "start_run 3, start_runs 2");
    }
    // Through SQL, the function takes the key and the retried run too, and hands them on.
    pqxx::connection conn(env.conninfo);
    pqxx::nontransaction tx(conn);
    // (run id, created) of a start of "one" with key k1.
    const auto keyed = [&] {
      const auto row =
          tx.exec1("SELECT run_id::text, created FROM flowreg.start_run('one', 'v1', '{}', 'k1')");
      return std::make_pair(row[0].as<std::string>(), row[1].as<bool>());
    };
    const auto first = keyed();
    CHECK(first.second);
    CHECK(keyed() == std::make_pair(first.first, false));
    const std::string retried =
        tx.exec1("SELECT run_id::text FROM flowreg.start_run('one', 'v1', '{}', NULL, '" +
                 first.first + "')")[0]
            .as<std::string>();
    CHECK(retried != first.first);
    CHECK(sql_one(env.conninfo, "SELECT retry_of FROM flowreg.runs WHERE id = '" + retried + "'") ==
          first.first);
    // A batch of one-step runs with keys, one given twice and one used before: 2 runs created.
    // Each run of the flow names its own solo task, and the flow has no other task.
    CHECK(tx.exec1("SELECT count(*) FILTER (WHERE created) || ' ' || count(*) FROM "
                   "flowreg.start_runs('one', 'v1', ARRAY['{}', '{}', '{}', '{}']::jsonb[], "
                   "ARRAY['k2', 'k2', 'k1', 'k3'])")[0]
              .as<std::string>() == "2 3");
    CHECK(sql_one(env.conninfo,
                  "SELECT count(*) || ' ' || count(*) FILTER (WHERE EXISTS (SELECT 1 FROM "
                  "flowreg.tasks t WHERE t.id = r.task_id AND t.run_id = r.id AND t.solo)) || ' ' "
                  "|| (SELECT count(*) FROM flowreg.tasks t WHERE t.flow_slug = 'one') FROM "
                  "flowreg.runs r WHERE r.flow_slug = 'one'") == "6 6 6");
    // A version that is not stored: start_runs' error, nothing written.
    const std::string before = sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs");
    auto missing = env.store.start_run("one", "v9", Json::object());
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == Errc::not_found);
    CHECK(contains(missing.error().message, "flow 'one' version 'v9' is not stored"));
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs") == before);
  }

  // RunStore::start_runs writes a batch of a one-step flow's runs (from kCopiedStartMin inputs on)
  // by COPY, after flowreg._start_copying gave their ids: the rows start_run writes, inputs whose
  // text COPY must escape included. Any other batch goes through start_runs.
  TEST_CASE("start_runs copies a batch of a one-step flow's runs: start_run's rows, any input") {
    auto env = open_env("rs_start_copied");
    const auto one = store_flow(env.store, flow("one", {step("a")}));
    const auto two = store_flow(env.store, flow("two", {step("a"), step("b", {"a"})}));
    const auto mapped = store_flow(env.store, flow("mapped", {step("m", {}, StepKind::map)}));
    // Calls of the functions by a store of its own, counted (track_functions), read once it is
    // closed (a backend reports its counts when it exits).
    sql_exec(env.conninfo,
             "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET track_functions = ''pl''',"
             " current_database()); END $$");
    const auto calls = [&] {
      return sql_one(env.conninfo,
                     "SELECT coalesce(string_agg(funcname || ' ' || calls, ', ' ORDER BY "
                     "funcname), '-') FROM pg_stat_user_functions WHERE funcname IN "
                     "('start_runs', '_start_copying', 'start_run')");
    };
    // What text COPY must escape: tab, newline, carriage return, backslash, \N, quotes, U+0001;
    // invalid UTF-8 (stored as U+FFFD, as every start stores it); characters beyond ASCII.
    const std::vector<Json> odd{
        Json{{"s", "tab\there\nnew line\r\\back\\slash"}},
        Json{{"s", "\\N"}, {"n", nullptr}},
        Json{{"s", "\"quoted\" 'single' \x01 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"}},
        Json{{"bad \xff key", "bad \xc3 value"}},
        Json::array({1, Json::array({2, Json{{"deep\t", Json::array({"\\"})}}})}),
        Json("a string"),
        Json(nullptr),
        Json(-1.5e300)};
    std::vector<Json> inputs;
    for (std::size_t i = 0; inputs.size() < kCopiedStartMin + 6; ++i)
      inputs.push_back(i < odd.size() ? odd[i] : Json{{"i", i}});
    std::vector<RunId> by_copy;
    {
      auto counted = RunStore::connect(env.conninfo);
      REQUIRE_MESSAGE(counted, flowreg::testing::failure_text(counted));
      auto started = counted->start_runs(one.slug, one.version, inputs);
      REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
      by_copy = *started;
      // The other flows, twice each: start_runs, and _start_copying only the first time.
      for (const FlowKey* key : {&two, &mapped})
        for (int i = 0; i < 2; ++i) {
          std::vector<Json> batch(kCopiedStartMin, Json::array({1, 2}));
          auto other = counted->start_runs(key->slug, key->version, batch);
          REQUIRE_MESSAGE(other, flowreg::testing::failure_text(other));
          CHECK(other->size() == kCopiedStartMin);
        }
      // Below kCopiedStartMin: start_runs.
      auto few = counted->start_runs(one.slug, one.version, std::vector<Json>(3, Json::object()));
      REQUIRE_MESSAGE(few, flowreg::testing::failure_text(few));
      CHECK(few->size() == 3);
    }
    // PostgreSQL 15 makes a function's shared entry at its first call, with 0 calls, and adds the
    // backend's counts when that backend reports (here: when it exits, which a loaded machine can
    // delay by seconds): the entries can read 0 for a while. Read until the counts are there.
    const std::string expected = "_start_copying 3, start_runs 5";
    std::string seen;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while ((seen = calls()) != expected && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(seen == expected);
    REQUIRE(by_copy.size() == inputs.size());
    CHECK(std::set<RunId>(by_copy.begin(), by_copy.end()).size() == inputs.size());
    // Run by run: the rows start_run writes for the same input (ids, times and input aside),
    // the same input stored, and ids in the order of the inputs.
    const std::string row_sql =
        "SELECT row(r.flow_slug, r.flow_version, r.status, r.output, r.error, r.remaining_leaves,"
        " r.idempotency_key, r.retry_of, r.finished_at, r.attempts, r.worker_id, r.created_at <="
        " now(), t.step_slug, t.task_index, t.flow_slug, t.flow_version, t.status, t.attempt,"
        " num_nulls(t.max_attempts, t.base_delay_ms, t.max_delay_ms, t.created_at), t.timeout_ms,"
        " t.input, t.output, t.error, t.error_at, t.worker_id, t.lease_expires_at, t.started_at,"
        " t.finished_at, t.available_at <= now(), t.solo, t.crashes, (SELECT count(*) FROM"
        " flowreg.step_states s WHERE s.run_id = r.id), (SELECT count(*) FROM flowreg.tasks o"
        " WHERE o.run_id = r.id))::text FROM flowreg.runs r JOIN flowreg.tasks t ON t.id ="
        " r.task_id AND t.run_id = r.id WHERE r.id = ";
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      CAPTURE(i);
      const RunId single = start(env.store, one, inputs[i]);
      const std::string rows = sql_one(env.conninfo, row_sql + "'" + by_copy[i] + "'");
      CHECK(rows == sql_one(env.conninfo, row_sql + "'" + single + "'"));
      CHECK(sql_one(env.conninfo,
                    "SELECT a.input = b.input FROM flowreg.runs a, flowreg.runs b"
                    " WHERE a.id = '" +
                        by_copy[i] + "' AND b.id = '" + single + "'") == "t");
      // Time-ordered, as start_runs makes them: their first 48 bits, milliseconds, never fall.
      if (i > 0) CHECK(by_copy[i - 1].substr(0, 13) <= by_copy[i].substr(0, 13));
    }
    CHECK(sql_one(env.conninfo, row_sql + "'" + by_copy[0] + "'") ==
          "(one,v1,started,,,1,,,,0,,t,a,0,one,v1,queued,0,4,60000,,,,,,,,,t,t,0,0,1)");
    CHECK(sql_one(env.conninfo, "SELECT input->>'s' FROM flowreg.runs WHERE id = '" + by_copy[0] +
                                    "'") == "tab\there\nnew line\r\\back\\slash");
    CHECK(sql_one(env.conninfo,
                  "SELECT input::text FROM flowreg.runs WHERE id = '" + by_copy[3] + "'") ==
          "{\"bad \xEF\xBF\xBD key\": \"bad \xEF\xBF\xBD value\"}");
    // The other flows' batches: their own layouts (tasks found by run; a map step's states, and
    // none for a chain's steps not ended: migration 0017).
    CHECK(sql_one(env.conninfo,
                  "SELECT count(*) || ' ' || count(*) FILTER (WHERE task_id IS NULL) FROM"
                  " flowreg.runs WHERE flow_slug IN ('two', 'mapped')") ==
          std::to_string(4 * kCopiedStartMin) + " " + std::to_string(4 * kCopiedStartMin));
    CHECK(sql_one(env.conninfo,
                  "SELECT count(*) FROM flowreg.step_states WHERE run_id IN (SELECT id FROM"
                  " flowreg.runs WHERE flow_slug IN ('two', 'mapped'))") ==
          std::to_string(2 * kCopiedStartMin));
    CHECK(sql_one(env.conninfo,
                  "SELECT count(*) FILTER (WHERE chained) || ' ' || count(*) FROM flowreg.runs"
                  " WHERE flow_slug = 'two'") ==
          std::to_string(2 * kCopiedStartMin) + " " + std::to_string(2 * kCopiedStartMin));
    // A version that is not stored: start_runs' error, by either path; nothing written.
    const std::string before = sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs");
    for (std::size_t n : {std::size_t{3}, kCopiedStartMin}) {
      auto missing = env.store.start_runs("one", "v9", std::span<const Json>(inputs.data(), n));
      REQUIRE_FALSE(missing);
      CHECK(missing.error().code == Errc::not_found);
      CHECK(contains(missing.error().message, "flow 'one' version 'v9' is not stored"));
    }
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs") == before);
  }

  // What start_run's short path takes from outside: the input (made valid UTF-8 by RunStore; its
  // nesting is bounded by the callers, 64 levels), the flow's slug and version.
  TEST_CASE(
      "start_run's short path with hostile input, slug and version: stored or refused whole") {
    auto env = open_env("rs_start_hostile");
    const auto one = store_flow(env.store, flow("one", {step("a")}));
    const auto count = [&] {
      return sql_one(env.conninfo,
                     "SELECT (SELECT count(*) FROM flowreg.runs) || '/' || "
                     "(SELECT count(*) FROM flowreg.tasks)");
    };
    const auto stored_input = [&](const RunId& run) {
      return Json::parse(
          sql_one(env.conninfo, "SELECT input::text FROM flowreg.runs WHERE id = '" + run + "'"));
    };
    // Invalid UTF-8 in a string and in a key: each bad byte is stored as U+FFFD.
    const RunId bad_bytes =
        start(env.store, one, Json{{"s", "bad \xff\xfe bytes"}, {"k\xc3", "truncated"}});
    CHECK(stored_input(bad_bytes) ==
          Json{{"s", "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes"}, {"k\xEF\xBF\xBD", "truncated"}});
    // 4 MiB, and nested 60 levels: stored as given.
    const Json big = Json{{"s", std::string(4 << 20, 'x')}};
    CHECK(stored_input(start(env.store, one, big)) == big);
    Json nested = "leaf";
    for (int i = 0; i < 60; ++i) nested = Json::array({nested});
    CHECK(stored_input(start(env.store, one, nested)) == nested);
    // Each started run has its task, queued.
    CHECK(count() == "3/3");

    // What PostgreSQL refuses is refused whole, with its reason: U+0000 in a string (jsonb has
    // no text for it).
    auto nul = env.store.start_run(one.slug, one.version, Json{{"s", std::string("a\0b", 3)}});
    REQUIRE_FALSE(nul);
    CHECK(contains(nul.error().message, "starting a run of flow 'one' version 'v1'"));
    CHECK(contains(nul.error().message, "\\u0000"));
    // A slug or version that is not UTF-8 (the server refuses the bytes), or 100,000 bytes long
    // (no such flow; one of 3-byte characters, which no cut may split): an error whose text is
    // valid UTF-8, and short: a name is shown up to 200 bytes with its size, the server's message
    // up to 2,000 (it quotes the slug too).
    std::string euros;
    for (int i = 0; i < 33'334; ++i) euros += "\xE2\x82\xAC";
    for (const auto& [slug, version] : {std::pair<std::string, std::string>{"one\xff\xfe", "v1"},
                                        {"one", "v1\xc3"},
                                        {std::string(100'000, 's'), "v1"},
                                        {"one", std::string(100'000, 'v')},
                                        {euros, "v1"}}) {
      auto refused = env.store.start_run(slug, version, Json::object());
      REQUIRE_FALSE(refused);
      const std::string& message = refused.error().message;
      CAPTURE(message.substr(0, 300));
      CHECK(fd::utf8_valid(message) == message);
      CHECK(contains(message, "starting a run of flow"));
      CHECK(message.size() < 3000);
      const std::size_t longest = std::max(slug.size(), version.size());
      if (longest > 200) CHECK(contains(message, "(" + std::to_string(longest) + " bytes)"));
    }
    // A run id that is not UTF-8, or 100,000 bytes long, named in the error as valid text, and
    // cut.
    const std::string long_id(100'000, 'r');
    for (auto refused : {env.store.cancel_run("\xff\xfe"),
                         env.store.get_run("r\xc3").map([](auto&&) { return true; }),
                         env.store.cancel_run(long_id),
                         env.store.run_steps(long_id).map([](auto&&) { return true; })}) {
      REQUIRE_FALSE(refused);
      CAPTURE(refused.error().message.substr(0, 300));
      CHECK(fd::utf8_valid(refused.error().message) == refused.error().message);
      CHECK(refused.error().message.size() < 3000);
    }
    CHECK(count() == "3/3");
  }

  // Runs have no foreign key to flows since migration 0011: its check locked the flow version's
  // row at every start (one MultiXact per run once sessions started runs of a flow at once).
  TEST_CASE("starting runs leaves no lock on their flow's row, even from two sessions at once") {
    auto env = open_env("rs_flow_row");
    auto key = store_flow(env.store, flow("locks", {step("a")}));
    const std::string xmax =
        "SELECT xmax::text FROM flowreg.flows WHERE slug = 'locks' AND version = '" + key.version +
        "'";
    // Storing the flow may have left its own lock (upsert_flow reads the row FOR UPDATE).
    const std::string stored = sql_one(env.conninfo, xmax);
    REQUIRE(env.store.start_run(key.slug, key.version, 1));
    CHECK(sql_one(env.conninfo, xmax) == stored);
    // Two transactions, each starting a run, open together: with the key, both locked the row.
    pqxx::connection a(env.conninfo), b(env.conninfo);
    pqxx::work ta(a), tb(b);
    const std::string start = "SELECT count(*) FROM flowreg.start_runs('locks', '" + key.version +
                              "', ARRAY['{}'::jsonb])";
    CHECK(ta.exec1(start)[0].as<int>() == 1);
    CHECK(tb.exec1(start)[0].as<int>() == 1);
    ta.commit();
    tb.commit();
    CHECK(sql_one(env.conninfo, xmax) == stored);
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs") == "3");
  }

  TEST_CASE(
      "a flow version that has runs cannot be deleted; one without runs can, with its steps") {
    auto env = open_env("rs_flow_delete");
    auto used = store_flow(env.store, flow("used", {step("a")}));
    store_flow(env.store, flow("spare", {step("a"), step("b", {"a"})}));
    REQUIRE(env.store.start_run(used.slug, used.version, 1));
    {
      pqxx::connection conn(env.conninfo);
      pqxx::work tx(conn);
      try {
        tx.exec0("DELETE FROM flowreg.flows WHERE slug IN ('used', 'spare')");
        FAIL("the delete of a flow version with runs was not refused");
      } catch (const pqxx::sql_error& e) {
        CHECK(e.sqlstate() == "23503");
        CHECK(contains(e.what(), "flow 'used' version '" + used.version +
                                     "' cannot be deleted: 1 run(s) of it are stored"));
      }
    }
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.flows") == "2");
    // Nor may flows be emptied under the runs (the key refused that too).
    try {
      sql_exec(env.conninfo, "TRUNCATE flowreg.flows CASCADE");
      FAIL("the truncation of flows under a run was not refused");
    } catch (const pqxx::sql_error& e) {
      CHECK(e.sqlstate() == "23503");
      CHECK(contains(e.what(), "flowreg.flows cannot be truncated while runs are stored"));
    }
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.flow_steps") == "3");
    sql_exec(env.conninfo, "DELETE FROM flowreg.flows WHERE slug = 'spare'");
    CHECK(sql_one(env.conninfo, "SELECT string_agg(slug, ',') FROM flowreg.flows") == "used");
    CHECK(sql_one(env.conninfo,
                  "SELECT count(*) FROM flowreg.flow_steps WHERE flow_slug = "
                  "'spare'") == "0");
    // Truncated with the runs, they go together.
    sql_exec(env.conninfo,
             "TRUNCATE flowreg.flows, flowreg.runs, flowreg.step_states, flowreg.tasks CASCADE");
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.flows") == "0");
  }

  // The race the foreign key's row lock used to settle: a start and a delete of its flow version,
  // each waiting for the other's transaction. Whichever commits first, no run is left without
  // its flow.
  TEST_CASE("a start and a delete of its flow version at once leave no run without its flow") {
    auto env = open_env("rs_flow_race");
    auto key = store_flow(env.store, flow("raced", {step("a")}));
    // Waits until a backend whose query contains `part` waits for a lock.
    auto await_lock_wait = [&](const std::string& part) {
      for (int i = 0; i < 500; ++i) {
        if (sql_one(env.conninfo,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                    "strpos(query, '" +
                        part + "') > 0") == "1")
          return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return false;
    };
    const std::string del = "DELETE FROM flowreg.flows WHERE slug = 'raced'";

    // The start first: the delete waits for it, then sees its run and is refused.
    {
      pqxx::connection starter(env.conninfo), deleter(env.conninfo);
      pqxx::work ts(starter);
      ts.exec1("SELECT count(*) FROM flowreg.start_runs('raced', '" + key.version +
               "', ARRAY['{}'::jsonb])");
      std::string refused;
      std::thread t([&] {
        try {
          pqxx::work td(deleter);
          td.exec0(del);
          td.commit();
        } catch (const pqxx::sql_error& e) {
          refused = e.sqlstate();
        } catch (const std::exception& e) {
          refused = e.what();
        }
      });
      const bool waited = await_lock_wait("DELETE FROM flowreg.flows");
      ts.commit();
      t.join();
      CHECK(waited);
      CHECK(refused == "23503");
    }
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.flows") == "1");

    // The delete first (of a version without runs): `start`, on a store of its own, waits for it
    // in the statement whose text holds `part`, then finds the version gone and creates nothing.
    // `start` returns the code of its error, nullopt when it started a run.
    const auto delete_first = [&](const std::string& part, auto start) {
      pqxx::connection deleter(env.conninfo);
      auto starter = RunStore::connect(env.conninfo);
      REQUIRE(starter);
      pqxx::work td(deleter);
      td.exec0(del);
      std::optional<Errc> refused;
      std::thread t([&] { refused = start(*starter); });
      const bool waited = await_lock_wait(part);
      td.commit();
      t.join();
      CHECK(waited);
      CHECK(refused == Errc::not_found);
    };
    const auto code_of = [](const auto& result) {
      return result ? std::nullopt : std::optional<Errc>(result.error().code);
    };
    sql_exec(
        env.conninfo,
        "DELETE FROM flowreg.runs; DELETE FROM flowreg.step_states; DELETE FROM flowreg.tasks");
    delete_first("start_run", [&](RunStore& store) {  // start_run's short path
      return code_of(store.start_run(key.slug, key.version, 1));
    });
    // By COPY (RunStore::start_runs, kCopiedStartMin inputs): _start_copying takes the lock on
    // runs before it reads the version's steps, so the start waits in it.
    store_flow(env.store, flow("raced", {step("a")}));
    delete_first("_start_copying", [&](RunStore& store) {
      return code_of(store.start_runs(key.slug, key.version,
                                      std::vector<Json>(kCopiedStartMin, Json::object())));
    });
    // The start first: a delete waits for its transaction from _start_copying on, before a row
    // of it is written (here none is: the delete then goes ahead).
    store_flow(env.store, flow("raced", {step("a")}));
    {
      pqxx::connection starter(env.conninfo), deleter(env.conninfo);
      pqxx::work ts(starter);
      CHECK(ts.exec1("SELECT count(*) FROM flowreg._start_copying('raced', '" + key.version +
                     "', 3)")[0]
                .as<int>() == 3);
      std::string outcome;
      std::thread t([&] {
        try {
          pqxx::work td(deleter);
          td.exec0(del);
          td.commit();
          outcome = "deleted";
        } catch (const std::exception& e) {
          outcome = e.what();
        }
      });
      const bool waited = await_lock_wait("DELETE FROM flowreg.flows");
      ts.commit();
      t.join();
      CHECK(waited);
      CHECK(outcome == "deleted");
    }
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.runs") == "0");
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.step_states") == "0");
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");
  }

  TEST_CASE("upsert_flow refuses a map step with two dependencies and an unknown dependency") {
    auto env = open_env("rs_bad_flow");
    auto map2 = env.store.upsert_flow(
        flow("bad", {step("a"), step("b"), step("m", {"a", "b"}, StepKind::map)}), "v1");
    REQUIRE_FALSE(map2);
    CHECK(map2.error().code == Errc::invalid_argument);
    auto unknown = env.store.upsert_flow(flow("bad", {step("a", {"zz"})}), "v1");
    REQUIRE_FALSE(unknown);
    CHECK(contains(unknown.error().message, "depends on 'zz'"));
  }

  TEST_CASE("get_run and list_runs read runs back, filtered by flow and status") {
    auto env = open_env("rs_read");
    auto k1 = store_flow(env.store, flow("read1", {step("a")}));
    auto k2 = store_flow(env.store, flow("read2", {step("a")}));
    auto r1 = start(env.store, k1, 1);
    start(env.store, k1, 2);
    start(env.store, k2, 3);
    drain(env.store, k2, [](const ClaimedTask&) { return 0; });
    auto missing = env.store.get_run("00000000-0000-0000-0000-000000000000");
    REQUIRE(missing);
    CHECK_FALSE(missing->has_value());
    auto info = run_info(env.store, r1);
    CHECK(info.flow_slug == "read1");
    CHECK(info.flow_version == "v1");
    CHECK(info.status == RunStatus::started);
    CHECK_FALSE(info.finished_at.has_value());
    CHECK_FALSE(info.retry_of.has_value());
    auto all = env.store.list_runs();
    REQUIRE(all);
    CHECK(all->size() == 3);
    auto of_flow = env.store.list_runs(RunFilter{"read1", std::nullopt, 10});
    REQUIRE(of_flow);
    CHECK(of_flow->size() == 2);
    CHECK(of_flow->front().input == 2);  // newest first
    auto done = env.store.list_runs(RunFilter{std::nullopt, RunStatus::completed, 10});
    REQUIRE(done);
    REQUIRE(done->size() == 1);
    CHECK(done->front().flow_slug == "read2");
    auto one = env.store.list_runs(RunFilter{std::nullopt, std::nullopt, 1});
    REQUIRE(one);
    CHECK(one->size() == 1);
  }

  TEST_CASE(
      "metrics read the run store at most once every cost factor times their last read's "
      "duration") {
    auto env = open_env("rs_metrics_reads");
    auto k = store_flow(env.store, flow("reads", {step("a")}));
    const auto sample = flowreg::test::metric_sample;
    const std::string queued = "flowreg_tasks_queued{flow=\"reads\"}";
    start(env.store, k, 1);
    // A cost factor of a million: a read of at least 0.1 ms holds the values for 100 s.
    fd::metrics::Registry slow_registry;
    const fd::metrics::StoreMetrics slow(env.conninfo, slow_registry, Millis(0), 1e6);
    std::string text = slow_registry.render();
    CHECK(sample(text, queued) == 1);
    const double took = sample(text, "flowreg_run_store_read_seconds");
    CHECK(took > 0);
    CHECK(took < 60);
    start(env.store, k, 2);
    text = slow_registry.render();
    CHECK(sample(text, queued) == 1);  // not read again
    CHECK(sample(text, "flowreg_run_store_read_seconds") == took);
    // A cost factor of 0 (and no cache): every rendering reads.
    fd::metrics::Registry registry;
    const fd::metrics::StoreMetrics every(env.conninfo, registry, Millis(0), 0);
    CHECK(sample(registry.render(), queued) == 2);
    start(env.store, k, 3);
    CHECK(sample(registry.render(), queued) == 3);
  }

  TEST_CASE("the flow slugs that have runs: each once, in order, whatever their versions") {
    auto env = open_env("rs_run_slugs");
    const auto slugs = [&] {
      return sql_one(env.conninfo,
                     "SELECT coalesce(string_agg(s, ',' ORDER BY n), '')"
                     " FROM flowreg._run_slugs() WITH ORDINALITY AS x(s, n)");
    };
    CHECK(slugs() == "");
    for (int v = 1; v <= 30; ++v) {
      store_flow(env.store, flow("slugs_b", {step("a")}), "v" + std::to_string(v));
      store_flow(env.store, flow("slugs_c", {step("a")}), "v" + std::to_string(v));
    }
    store_flow(env.store, flow("slugs_a", {step("a")}));
    CHECK(slugs() == "");  // stored versions, no runs yet
    start(env.store, FlowKey{"slugs_c", "v7"}, 1);
    start(env.store, FlowKey{"slugs_c", "v30"}, 2);
    start(env.store, FlowKey{"slugs_a", "v1"}, 3);
    CHECK(slugs() == "slugs_a,slugs_c");
    start(env.store, FlowKey{"slugs_b", "v2"}, 4);
    CHECK(slugs() == "slugs_a,slugs_b,slugs_c");
  }

  TEST_CASE(
      "a worker's first heartbeat forgets the workers silent for 7 days, and beyond the 1,000 "
      "heard from last those silent for an hour; later heartbeats forget nothing") {
    auto env = open_env("rs_forget_workers");
    const auto beat = [&](const std::string& id, bool stopped = false) {
      fd::WorkerRecord w;
      w.id = id;
      w.host = "here";
      w.pid = 1;
      w.concurrency = 1;
      w.heartbeat_interval = Millis(5'000);
      auto r = env.store.heartbeat(w, stopped);
      REQUIRE_MESSAGE(r, flowreg::testing::failure_text(r));
    };
    const auto ids = [&] {
      std::vector<std::string> out;
      auto listed = env.store.list_workers();
      REQUIRE_MESSAGE(listed, flowreg::testing::failure_text(listed));
      for (const auto& w : *listed) out.push_back(w.id);
      std::sort(out.begin(), out.end());
      return out;
    };
    // Heard from: 8 days ago (stopped, and silent: died), 6 days ago, 2 hours ago, a minute ago.
    for (const std::string id : {"stopped8d", "died8d", "died6d", "died2h", "live"})
      beat(id, id.starts_with("stopped"));
    sql_exec(env.conninfo,
             "UPDATE flowreg.workers SET last_heartbeat_at = now() - CASE id"
             " WHEN 'stopped8d' THEN interval '8 days' WHEN 'died8d' THEN interval '8 days'"
             " WHEN 'died6d' THEN interval '6 days' WHEN 'died2h' THEN interval '2 hours'"
             " ELSE interval '1 minute' END");
    beat("live");  // a heartbeat of a worker already listed forgets nothing
    CHECK(ids() == std::vector<std::string>{"died2h", "died6d", "died8d", "live", "stopped8d"});
    beat("new");
    CHECK(ids() == std::vector<std::string>{"died2h", "died6d", "live", "new"});

    // 1,100 more, heard from 2 hours and 1 to 1,100 minutes ago (old0001 the latest): with the
    // 4 above and the next worker, 1,105. That worker's start keeps the 1,000 heard from last
    // (newer, new and live now, died2h 2 hours ago, old0001 to old0996) and forgets the others,
    // each silent for more than an hour: died6d and old0997 to old1100.
    sql_exec(env.conninfo,
             "INSERT INTO flowreg.workers (id, host, pid, concurrency, last_heartbeat_at)"
             " SELECT 'old' || lpad(i::text, 4, '0'), 'here', i, 1,"
             "  now() - interval '2 hours' - i * interval '1 minute'"
             " FROM generate_series(1, 1100) AS i");
    beat("newer");
    const auto left = ids();
    CHECK(left.size() == 1000);
    for (const std::string id : {"newer", "new", "live", "died2h", "old0001", "old0996"})
      CHECK_MESSAGE(std::binary_search(left.begin(), left.end(), id), id);
    for (const std::string id : {"died6d", "old0997", "old1100"})
      CHECK_MESSAGE(!std::binary_search(left.begin(), left.end(), id), id);
  }

  TEST_CASE("a listener is notified when tasks become ready and when a run ends") {
    auto env = open_env("rs_notify");
    auto key = store_flow(env.store, flow("notify", {step("a")}));
    auto listener = Listener::connect(env.conninfo);
    REQUIRE_MESSAGE(listener, flowreg::testing::failure_text(listener));
    auto nothing = listener->wait(Millis(20));
    REQUIRE(nothing);
    CHECK_FALSE(nothing->has_value());
    // Every notification received so far; next_matching waits (woken by the notification) until
    // one matching arrives.
    std::vector<fd::Notification> seen;
    auto next_matching = [&](const std::string& channel, const std::string& payload) {
      auto match = [&] {
        return std::any_of(seen.begin(), seen.end(), [&](const fd::Notification& n) {
          return n.channel == channel && n.payload == payload;
        });
      };
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!match() && std::chrono::steady_clock::now() < deadline) {
        auto n = listener->wait(Millis(10'000));
        REQUIRE(n);
        if (n->has_value()) seen.push_back(**n);
      }
      return match();
    };
    RunId run;
    std::thread starter([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      auto started = env.store.start_run(key.slug, key.version, 1);
      if (started) run = *started;
    });
    const bool ready = next_matching("flowreg_tasks", "notify");
    starter.join();
    CHECK(ready);
    REQUIRE_FALSE(run.empty());
    CHECK(next_matching("flowreg_runs", run + " started"));
    auto tasks = claim(env.store, key);
    REQUIRE(tasks.size() == 1);
    CHECK(complete(env.store, {{tasks[0].id, tasks[0].attempt, 1}}).empty());
    CHECK(next_matching("flowreg_runs", run + " completed"));
  }

  // The statements of schemas/queries/ are compiled in (store.cmake fails the build when a file
  // has no Query or a Query no file); libpqxx prepares them lazily, at first use: each is
  // prepared here on a migrated database, so that one the server cannot parse fails here.
  TEST_CASE("every statement of schemas/queries/ is compiled in and parses on a migrated server") {
    auto env = open_env("rs_queries");
    pqxx::connection conn(env.conninfo);
    REQUIRE(fd::builtin_queries().size() == fd::kQueryCount);
    for (std::size_t i = 0; i < fd::kQueryCount; ++i) {
      const auto& q = fd::query_file(static_cast<fd::Query>(i));
      INFO("schemas/queries/" << q.name << ".sql");
      CHECK(static_cast<std::size_t>(q.query) == i);
      CHECK_FALSE(q.sql.empty());
      if (q.query == fd::Query::session_settings) {  // several statements: not preparable
        CHECK_NOTHROW(pqxx::nontransaction(conn).exec0(std::string(q.sql)));
        continue;
      }
      CHECK_NOTHROW(conn.prepare(q.name, std::string(q.sql)));
      CHECK_NOTHROW(conn.prepare_now(q.name));
    }
  }

  // Every attempt of every task (migration 0019): those that did not complete are kept as they
  // end, and the completing one is merged in from the step state.
  TEST_CASE("a task that fails once then completes lists two attempts: retried, then completed") {
    auto env = open_env("rs_attempts_retried");
    auto charge = step("charge");
    charge.options.max_attempts = 3;
    auto key = store_flow(env.store, flow("attempts_retried", {step("fetch"), charge}));
    auto run = start(env.store, key, Json::object());
    auto first = claim(env.store, key, 100, "w1");
    REQUIRE(first.size() == 2);
    const auto& task = first[0].step_slug == "charge" ? first[0] : first[1];
    const auto& other = first[0].step_slug == "charge" ? first[1] : first[0];
    CHECK(fail(env.store, {{task.id, 1, "gateway timed out"}}).empty());
    CHECK(complete(env.store, {{other.id, other.attempt, 1}}).empty());
    sql_exec(env.conninfo, "UPDATE flowreg.tasks SET available_at = now()");
    auto again = claim(env.store, key, 100, "w2");
    REQUIRE(again.size() == 1);
    CHECK(complete(env.store, {{again[0].id, 2, "paid"}}).empty());
    REQUIRE(run_info(env.store, run).status == RunStatus::completed);
    auto page = env.store.task_attempts(run, "charge", 100, 0);
    REQUIRE_MESSAGE(page, flowreg::testing::failure_text(page));
    REQUIRE(page->attempts.size() == 2);
    CHECK(page->total == 2);
    const auto& a1 = page->attempts[0];
    CHECK(a1.attempt == 1);
    CHECK(a1.outcome == "retried");
    CHECK(a1.worker == "w1");
    CHECK(a1.error == "gateway timed out");
    REQUIRE(a1.started_at);
    REQUIRE(a1.finished_at);
    CHECK(*a1.finished_at >= *a1.started_at);
    const auto& a2 = page->attempts[1];
    CHECK(a2.attempt == 2);
    CHECK(a2.outcome == "completed");
    CHECK(a2.worker == "w2");
    CHECK(a2.finished_at);
    // Every step: fetch's one attempt first (the flow's order), then charge's two; paged.
    auto all = env.store.task_attempts(run, "", 100, 0);
    REQUIRE(all);
    CHECK(all->total == 3);
    REQUIRE(all->attempts.size() == 3);
    CHECK(all->attempts[0].step_slug == "fetch");
    auto second_page = env.store.task_attempts(run, "", 2, 2);
    REQUIRE(second_page);
    CHECK(second_page->total == 3);
    REQUIRE(second_page->attempts.size() == 1);
    CHECK(second_page->attempts[0].outcome == "completed");
    CHECK(second_page->attempts[0].attempt == 2);
    auto past = env.store.task_attempts(run, "", 2, 10);
    REQUIRE(past);
    CHECK(past->attempts.empty());
    CHECK(past->total == 3);
  }

  TEST_CASE("a task that fails for good after N attempts keeps N rows, the last failed") {
    auto env = open_env("rs_attempts_failed");
    auto flaky = step("flaky");
    flaky.options.max_attempts = 3;
    auto key = store_flow(env.store, flow("attempts_failed", {flaky}));
    auto run = start(env.store, key, Json::object());
    for (int attempt = 1; attempt <= 3; ++attempt) {
      CAPTURE(attempt);
      sql_exec(env.conninfo, "UPDATE flowreg.tasks SET available_at = now()");
      auto tasks = claim(env.store, key);
      REQUIRE(tasks.size() == 1);
      CHECK(fail(env.store, {{tasks[0].id, attempt, "boom " + std::to_string(attempt)}}).empty());
    }
    REQUIRE(run_info(env.store, run).status == RunStatus::failed);
    CHECK(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.task_attempts") == "3");
    auto page = env.store.task_attempts(run, "", 100, 0);
    REQUIRE(page);
    REQUIRE(page->attempts.size() == 3);
    CHECK(page->attempts[0].outcome == "retried");
    CHECK(page->attempts[1].outcome == "retried");
    CHECK(page->attempts[2].outcome == "failed");
    CHECK(page->attempts[2].error == "boom 3");
    // Errors are kept cut to 4,000 characters.
    auto other = start(env.store, key, Json::object());
    auto tasks = claim(env.store, key);
    REQUIRE(tasks.size() == 1);
    CHECK(fail(env.store, {{tasks[0].id, 1, std::string(10000, 'x'), true}}).empty());
    CHECK(sql_one(env.conninfo, "SELECT length(error) FROM flowreg.task_attempts WHERE run_id = '" +
                                    other + "'") == "4000");
  }

  TEST_CASE("an expired lease is kept as lease_expired, whether attempts are left or not") {
    auto env = open_env("rs_attempts_lease");
    auto a = step("a");
    a.options.max_attempts = 2;
    auto key = store_flow(env.store, flow("attempts_lease", {a}));
    auto run = start(env.store, key, Json::object());
    REQUIRE(claim(env.store, key, 10, "w1").size() == 1);
    sql_exec(env.conninfo, "UPDATE flowreg.tasks SET lease_expires_at = now()");
    auto second = claim(env.store, key, 10, "w2");  // requeued at once, and claimed
    REQUIRE(second.size() == 1);
    CHECK(second[0].attempt == 2);
    {
      auto page = env.store.task_attempts(run, "", 100, 0);
      REQUIRE(page);
      REQUIRE(page->attempts.size() == 2);
      CHECK(page->attempts[0].outcome == "lease_expired");
      CHECK(page->attempts[0].worker == "w1");
      CHECK(page->attempts[1].outcome == "running");
      CHECK(page->attempts[1].worker == "w2");
    }
    sql_exec(env.conninfo, "UPDATE flowreg.tasks SET lease_expires_at = now()");
    CHECK(claim(env.store, key, 10, "w3").empty());  // the last attempt: the run fails
    REQUIRE(run_info(env.store, run).status == RunStatus::failed);
    auto page = env.store.task_attempts(run, "", 100, 0);
    REQUIRE(page);
    REQUIRE(page->attempts.size() == 2);
    CHECK(page->attempts[1].outcome == "lease_expired");
    CHECK(page->attempts[1].worker == "w2");
    CHECK(contains(page->attempts[1].error.value_or(""), "lease expired"));
  }

  TEST_CASE("a crash report and a shutdown keep their attempts as crashed and interrupted") {
    auto env = open_env("rs_attempts_crash");
    auto a = step("a");
    a.options.max_attempts = 3;
    auto key = store_flow(env.store, flow("attempts_crash", {a}));
    auto run = start(env.store, key, Json::object());
    auto first = claim(env.store, key, 10, "w1");
    REQUIRE(first.size() == 1);
    const std::vector<fd::Release> release{{first[0].id, 1, true}};
    auto released = env.store.release("w1", release);
    REQUIRE_MESSAGE(released, flowreg::testing::failure_text(released));
    auto second = claim(env.store, key, 10, "w2");
    REQUIRE(second.size() == 1);
    const std::vector<fd::CrashReport> reports{{second[0].id, 2, 11}};
    auto crashed = env.store.report_crashes(reports, 3);
    REQUIRE_MESSAGE(crashed, flowreg::testing::failure_text(crashed));
    REQUIRE(run_info(env.store, run).status == RunStatus::failed);
    auto page = env.store.task_attempts(run, "", 100, 0);
    REQUIRE(page);
    REQUIRE(page->attempts.size() == 2);
    CHECK(page->attempts[0].outcome == "interrupted");
    CHECK(page->attempts[1].outcome == "crashed");
    CHECK(page->attempts[1].error == "handler crashed the worker (signal 11)");
  }

  TEST_CASE("a pruned run leaves no attempt rows behind") {
    auto env = open_env("rs_attempts_prune");
    auto key = store_flow(env.store, flow("attempts_prune", {step("a")}));
    auto run = start(env.store, key, Json::object());
    auto kept = start(env.store, key, Json::object());
    for (int i = 0; i < 2; ++i) {
      auto tasks = claim(env.store, key, 1);
      REQUIRE(tasks.size() == 1);
      CHECK(fail(env.store, {{tasks[0].id, 1, "bad", true}}).empty());
    }
    REQUIRE(sql_one(env.conninfo, "SELECT count(*) FROM flowreg.task_attempts") == "2");
    sql_exec(env.conninfo,
             "UPDATE flowreg.runs SET finished_at = now() - interval '2 hours', created_at = "
             "now() - interval '3 hours' WHERE id = '" +
                 run + "'");
    auto pruned = env.store.prune(Millis(3600'000));
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 1);
    CHECK(sql_one(env.conninfo,
                  "SELECT string_agg(run_id::text, ',') FROM flowreg.task_attempts") == kept);
  }

  TEST_CASE(
      "attempts run in a handler process keep what they cost, wherever the attempt is kept; a bad "
      "entry fails nothing") {
    auto env = open_env("rs_attempts_process");
    auto charge = step("charge");
    charge.options.max_attempts = 3;
    auto two = store_flow(env.store, flow("attempts_process", {step("fetch"), charge}));
    auto run = start(env.store, two, Json::object());
    auto first = claim(env.store, two, 100, "w1");
    REQUIRE(first.size() == 2);
    const auto& task = first[0].step_slug == "charge" ? first[0] : first[1];
    const auto& other = first[0].step_slug == "charge" ? first[1] : first[0];
    // charge: a crash (retried), then a completion, each in a process; fetch on a thread.
    Failure crashed{task.id, 1, "crashed its process"};
    crashed.process = TaskProcess{101, 2500, 4096, 1200, SIGSEGV, std::nullopt, 0};
    CHECK(fail(env.store, {crashed}).empty());
    CHECK(complete(env.store, {{other.id, other.attempt, 1}}).empty());
    sql_exec(env.conninfo, "UPDATE flowreg.tasks SET available_at = now()");
    auto again = claim(env.store, two, 100, "w2");
    REQUIRE(again.size() == 1);
    Completion paid{again[0].id, 2, "paid"};
    paid.process = TaskProcess{102, 300, 5120, 150, std::nullopt, std::nullopt, 0};
    CHECK(complete(env.store, {paid}).empty());
    REQUIRE(run_info(env.store, run).status == RunStatus::completed);
    auto page = env.store.task_attempts(run, "", 100, 0);
    REQUIRE_MESSAGE(page, flowreg::testing::failure_text(page));
    REQUIRE(page->attempts.size() == 3);
    CHECK(page->attempts[0].step_slug == "fetch");
    CHECK_FALSE(page->attempts[0].process);
    REQUIRE(page->attempts[1].process);
    CHECK(page->attempts[1].outcome == "retried");
    CHECK(page->attempts[1].process->pid == 101);
    CHECK(page->attempts[1].process->cpu_us == 2500);
    CHECK(page->attempts[1].process->max_rss_kb == 4096);
    CHECK(page->attempts[1].process->handler_us == 1200);
    CHECK(page->attempts[1].process->signal == SIGSEGV);
    CHECK_FALSE(page->attempts[1].process->exit_status);
    REQUIRE(page->attempts[2].process);
    CHECK(page->attempts[2].outcome == "completed");
    CHECK(page->attempts[2].process->pid == 102);
    CHECK_FALSE(page->attempts[2].process->signal);

    // A map step: each task's, while the step runs (the task holds it) and after (its step).
    auto mapped =
        store_flow(env.store, flow("attempts_process_map", {step("m", {}, StepKind::map)}));
    auto fan = start(env.store, mapped, Json::array({1, 2}));
    auto elements = claim(env.store, mapped, 100, "w4");
    REQUIRE(elements.size() == 2);
    const auto& e0 = elements[0].task_index == 0 ? elements[0] : elements[1];
    const auto& e1 = elements[0].task_index == 0 ? elements[1] : elements[0];
    Completion c1{e1.id, 1, 2};
    c1.process = TaskProcess{201, 1, 1, 1, std::nullopt, std::nullopt, 0};
    CHECK(complete(env.store, {c1}).empty());
    const auto pids_of = [&](const RunId& r) {
      std::string out;
      auto attempts = env.store.task_attempts(r, "", 100, 0);
      REQUIRE_MESSAGE(attempts, flowreg::testing::failure_text(attempts));
      for (const auto& a : attempts->attempts)
        out += fmt::format("{}{}:{}", out.empty() ? "" : ",", a.outcome,
                           a.process ? std::to_string(a.process->pid) : "-");
      return out;
    };
    CHECK(pids_of(fan) == "running:-,completed:201");
    Completion c0{e0.id, 1, 1};
    c0.process = TaskProcess{200, 1, 1, 1, std::nullopt, std::nullopt, 0};
    CHECK(complete(env.store, {c0}).empty());
    REQUIRE(run_info(env.store, fan).status == RunStatus::completed);
    CHECK(pids_of(fan) == "completed:200,completed:201");

    // A one-step flow's runs, completed by one batch whose "process" entries are bad in every
    // way a row can be: each run completes; what can be read is read, held to its range.
    auto one = store_flow(env.store, flow("attempts_process_one", {step("only")}));
    for (int i = 0; i < 4; ++i) start(env.store, one, Json::object());
    auto tasks = claim(env.store, one, 100, "w3");
    REQUIRE(tasks.size() == 4);
    // ([pid, cpu_us, max_rss_kb, handler_us, signal, exit_status, left_processes].)
    const Json entries =
        Json::array({Json::array({7, 10, 20, 5, nullptr, 3}), "x", Json::array({"<b>", 5}),
                     Json::array({1e30, -7, "big", 0, 1e9, nullptr, 2.5})});
    Json batch = Json::array();
    for (std::size_t i = 0; i < tasks.size(); ++i)
      batch.push_back(
          {{"id", tasks[i].id}, {"attempt", 1}, {"output", 1}, {"process", entries[i]}});
    CHECK(sql_one(env.conninfo, "SELECT cardinality(flowreg.complete_tasks('" + batch.dump() +
                                    "'::jsonb))") == "0");
    std::vector<std::string> read;
    for (const auto& t : tasks) {
      CHECK(run_info(env.store, t.run_id).status == RunStatus::completed);
      auto attempts = env.store.task_attempts(t.run_id, "", 100, 0);
      REQUIRE(attempts);
      REQUIRE(attempts->attempts.size() == 1);
      const auto& p = attempts->attempts[0].process;
      read.push_back(!p ? "none"
                        : fmt::format("{} {} {} {} {} {} {}", p->pid, p->cpu_us, p->max_rss_kb,
                                      p->handler_us, p->signal.value_or(-1),
                                      p->exit_status.value_or(-1), p->left_processes));
    }
    std::sort(read.begin(), read.end());
    CHECK(read == std::vector<std::string>{"2147483647 0 0 0 255 -1 2", "7 10 20 5 -1 3 0", "none",
                                           "none"});
  }
}
