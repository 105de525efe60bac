// Upgrading a database with live runs in place: migration 0008 (lean rows) takes over the runs the
// release before it left in every state, and they finish as they would have.
//
// The database is brought to what the release before 0008 left: runs are driven into their states
// through RunStore, then the rows are put back in that release's layout (a task copied its input
// and a single step's task kept its output; step states and tasks had foreign keys; input was NOT
// NULL) and 0008 is forgotten. migrate() then applies 0008 and the function files again, and the
// runs are finished through RunStore.

#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/flow.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/result_text.hpp"

namespace fd = flowreg::detail;
using flowreg::pgtest::query_one_or_empty;
using flowreg::pgtest::step;
using Json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

void exec(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::work tx(conn);
  tx.exec(sql);
  tx.commit();
}

fd::RunStore connect(const std::string& conninfo) {
  auto store = fd::RunStore::connect(conninfo);
  REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
  return std::move(*store);
}

// A new database of the current release's schema (every migration and function file applied),
// which a case then makes look like an earlier release's, and a store on it.
struct Migrated {
  std::string db;
  fd::RunStore store;
};

Migrated migrated_database(const std::string& name) {
  std::string db = flowreg::pgtest::empty_database(name);
  auto migrated = fd::migrate(db);
  REQUIRE_MESSAGE(migrated, flowreg::testing::failure_text(migrated));
  fd::RunStore store = connect(db);
  return Migrated{std::move(db), std::move(store)};
}

// A retry is due soon.
flowreg::Options quick_retries() {
  flowreg::Options o;
  o.base_delay = flowreg::Millis(300);
  o.max_delay = flowreg::Millis(300);
  return o;
}

fd::RunId start(fd::RunStore& store, const fd::FlowKey& key, const Json& input) {
  auto run = store.start_run(key.slug, key.version, input);
  REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
  return *run;
}

// Every claimable task of these flows, by run id and step slug (and index).
std::map<std::string, fd::ClaimedTask> claim_all(fd::RunStore& store,
                                                 std::span<const fd::FlowKey> flows) {
  auto claimed = store.claim("old-worker", flows, 1000);
  REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
  std::map<std::string, fd::ClaimedTask> out;
  for (auto& t : *claimed)
    out[t.run_id + "/" + t.step_slug + "/" + std::to_string(t.task_index)] = t;
  return out;
}

const fd::ClaimedTask& task(const std::map<std::string, fd::ClaimedTask>& tasks,
                            const fd::RunId& run, const std::string& step, int index = 0) {
  const auto it = tasks.find(run + "/" + step + "/" + std::to_string(index));
  REQUIRE_MESSAGE(it != tasks.end(), "no claimed task " << step << " " << index << " of " << run);
  return it->second;
}

Json echo(const fd::ClaimedTask& t) { return Json{{"echo", t.input}}; }

void complete(fd::RunStore& store, const fd::ClaimedTask& t) {
  const fd::Completion c{t.id, t.attempt, echo(t), 0};
  auto rejected = store.complete(std::span(&c, 1));
  REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
  REQUIRE(rejected->empty());
}

// The old worker gives `t` back unstarted (its attempt refunded).
void give_back(fd::RunStore& store, const fd::ClaimedTask& t) {
  const fd::Release r{t.id, t.attempt, false};
  auto released = store.release("old-worker", std::span(&r, 1));
  REQUIRE_MESSAGE(released, flowreg::testing::failure_text(released));
}

// `t`'s attempt fails with `error`, for good when `permanent`.
void fail(fd::RunStore& store, const fd::ClaimedTask& t, const std::string& error, bool permanent) {
  const fd::Failure f{t.id, t.attempt, error, permanent};
  auto failed = store.fail(std::span(&f, 1));
  REQUIRE_MESSAGE(failed, flowreg::testing::failure_text(failed));
}

// Migrates `db` as an upgraded flowreg would on its first use; the versions it applied.
std::vector<int> upgrade(const std::string& db) {
  auto upgraded = fd::migrate(db);
  REQUIRE_MESSAGE(upgraded, flowreg::testing::failure_text(upgraded));
  std::vector<int> versions;
  for (const auto& m : upgraded->applied) versions.push_back(m.version);
  return versions;
}

fd::RunInfo run_info(fd::RunStore& store, const fd::RunId& run) {
  auto info = store.get_run(run);
  REQUIRE_MESSAGE(info, flowreg::testing::failure_text(info));
  REQUIRE(info->has_value());
  return **info;
}

std::string q(const std::string& conninfo, const std::string& sql) {
  return query_one_or_empty(conninfo, sql);
}

// The ids of a list of runs, in its order.
std::vector<std::string> run_ids(const flowreg::Result<std::vector<fd::RunInfo>>& runs) {
  REQUIRE_MESSAGE(runs, flowreg::testing::failure_text(runs));
  std::vector<std::string> out;
  for (const auto& r : *runs) out.push_back(r.id);
  return out;
}

// What the releases before 0017 stored: a chain's run with a step state for every step from its
// start (those the view shows, for the steps not ended), no chained marks, the view of 0012.
// Cases that go back further start with this.
const std::string kBefore0017 =
    "DROP TABLE flowreg.retention;"       // migration 0029's
    "DROP INDEX flowreg.runs_by_parent;"  // migration 0028's
    "CREATE TEMP TABLE chain_steps AS SELECT v.* FROM flowreg.steps v"
    "  JOIN flowreg.runs r ON r.id = v.run_id WHERE r.chained"
    "  AND NOT EXISTS (SELECT FROM flowreg.step_states s"
    "                  WHERE s.run_id = v.run_id AND s.step_slug = v.step_slug);"
    "CREATE OR REPLACE VIEW flowreg.steps AS"
    "  SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.status, s.remaining_deps,"
    "         s.remaining_tasks, s.task_count, s.output, s.error, s.started_at, s.finished_at,"
    "         s.attempts, s.worker_id"
    "  FROM flowreg.step_states s"
    "  UNION ALL"
    "  SELECT r.id, fs.step_slug, fs.step_index, fs.kind, r.status, 0,"
    "         CASE WHEN r.status = 'completed' THEN 0 ELSE 1 END, 1, r.output -> fs.step_slug,"
    "         CASE WHEN r.status = 'failed' THEN r.error END, r.created_at, r.finished_at,"
    "         r.attempts, r.worker_id"
    "  FROM flowreg.runs r"
    "  JOIN flowreg.flow_steps fs ON fs.flow_slug = r.flow_slug AND fs.version = r.flow_version"
    "  WHERE r.attempts IS NOT NULL;"
    "INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, status, remaining_deps,"
    "  remaining_tasks, task_count, output, error, started_at, finished_at, attempts, worker_id)"
    " SELECT * FROM chain_steps;"
    "DROP TABLE chain_steps;"
    "UPDATE flowreg.tasks SET created_at = NULL WHERE chained;"
    "ALTER TABLE flowreg.runs DROP COLUMN chained;"
    "ALTER TABLE flowreg.tasks DROP COLUMN chained;";

// What the releases before 0016 had: the queue and the runs of a flow indexed by the flow's names.
// Cases that go back further start with this.
const std::string kBefore0016 =
    kBefore0017 +
    "DROP INDEX flowreg.tasks_queued;"
    "CREATE INDEX tasks_queued ON flowreg.tasks (flow_slug, flow_version, available_at)"
    "  WHERE status = 'queued';"
    "DROP INDEX flowreg.runs_by_flow;"
    "CREATE INDEX runs_by_flow ON flowreg.runs (flow_slug, created_at DESC);";

// What the releases before 0015 had: an index of runs on created_at alone. Cases that go back
// further start with this.
const std::string kBefore0015 =
    kBefore0016 + "CREATE INDEX runs_by_created ON flowreg.runs (created_at DESC);";

// What the releases before 0014 stored: every task with a copy of its step's attempts and retry
// delays, taken when it was created, and its creation time. Cases that go back further start with
// this.
const std::string kBefore0014 =
    kBefore0015 +
    "UPDATE flowreg.tasks t SET max_attempts = fs.max_attempts, base_delay_ms = fs.base_delay_ms,"
    "  max_delay_ms = fs.max_delay_ms, created_at = coalesce(t.created_at, now())"
    " FROM flowreg.flow_steps fs WHERE fs.flow_slug = t.flow_slug"
    "  AND fs.version = t.flow_version AND fs.step_slug = t.step_slug;"
    "ALTER TABLE flowreg.tasks ALTER COLUMN max_attempts SET NOT NULL,"
    "  ALTER COLUMN base_delay_ms SET NOT NULL, ALTER COLUMN max_delay_ms SET NOT NULL,"
    "  ALTER COLUMN created_at SET NOT NULL, ALTER COLUMN created_at SET DEFAULT now();";

// What the releases before 0013 stored: no task of a one-step flow's run apart (solo), every task
// in the unique index on (run_id, step_slug, task_index), no task_id in runs. Cases that go back
// further start with this.
const std::string kBefore0013 =
    kBefore0014 +
    "UPDATE flowreg.tasks SET solo = false WHERE solo;"
    "ALTER TABLE flowreg.tasks ADD CONSTRAINT tasks_run_id_step_slug_task_index_key"
    "  UNIQUE (run_id, step_slug, task_index);"
    "DROP INDEX flowreg.tasks_by_run;"
    "ALTER TABLE flowreg.tasks DROP COLUMN solo;"
    "ALTER TABLE flowreg.runs DROP COLUMN task_id;";

// What the releases before 0012 stored: every step in step_states, a one-step flow's too (this
// release keeps that step's state in its run's row), no attempts or worker in runs, no view.
// Cases that go back further start with this.
const std::string kBefore0012 =
    kBefore0013 +
    "INSERT INTO flowreg.step_states (run_id, step_slug, step_index, kind, status, remaining_deps,"
    "  remaining_tasks, task_count, output, error, started_at, finished_at, attempts, worker_id)"
    " SELECT v.* FROM flowreg.steps v JOIN flowreg.runs r ON r.id = v.run_id"
    " WHERE r.attempts IS NOT NULL;"
    "DROP VIEW flowreg.steps;"
    "ALTER TABLE flowreg.runs DROP COLUMN attempts, DROP COLUMN worker_id;";

// The flows whose runs are left in every state: a single step, a chain a -> b, a map step and the
// step summing it.
struct LiveFlows {
  fd::FlowKey single, pipe, fan;
  std::vector<fd::FlowKey> all;
};

LiveFlows store_live_flows(fd::RunStore& store) {
  using flowreg::pgtest::store_flow;
  LiveFlows f;
  f.single = store_flow(store, "single", {step("only")}, quick_retries());
  f.pipe = store_flow(store, "pipe", {step("a"), step("b", {"a"})}, quick_retries());
  f.fan =
      store_flow(store, "fan", {step("each", {}, flowreg::StepKind::map), step("sum", {"each"})},
                 quick_retries());
  f.all = {f.single, f.pipe, f.fan};
  return f;
}

// Finishes every started run: claims, echoes the input, completes, until no run is started (a
// retry becomes due 300 ms after its failure). Returns the input each task's claim returned, by
// run/step/index.
std::map<std::string, Json> finish_all(fd::RunStore& store, const std::string& db,
                                       std::span<const fd::FlowKey> flows) {
  std::map<std::string, Json> inputs;
  for (int round = 0; round < 100; ++round) {
    if (q(db, "SELECT count(*) FROM flowreg.runs WHERE status = 'started'") == "0") break;
    auto batch = claim_all(store, flows);
    for (const auto& [where, t] : batch) {
      inputs[where] = t.input;
      complete(store, t);
    }
    if (batch.empty()) std::this_thread::sleep_for(100ms);
  }
  return inputs;
}

}  // namespace

TEST_SUITE("live_upgrade") {
  TEST_CASE("migration 0008 takes over runs left in every state by the release before it") {
    Migrated m = migrated_database("lu_0008");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, flows] = live;

    // Runs in every state.
    const auto queued = start(store, single, Json{{"q", 1}});          // never claimed
    const auto held = start(store, single, Json{{"h", 2}});            // claimed, still running
    const auto retrying = start(store, single, Json{{"r", 3}});        // failed once, retry due
    const auto chain = start(store, pipe, Json{{"c", 4}});             // a done, b queued
    const auto chain_held = start(store, pipe, Json{{"c", 5}});        // a done, b running
    const auto mapped = start(store, fan, Json::array({10, 20, 30}));  // 0 done, 1 running, 2 new
    const auto done = start(store, single, Json{{"d", 6}});
    const auto failed = start(store, single, Json{{"f", 7}});
    const auto cancelled = start(store, pipe, Json{{"x", 8}});

    fd::ClaimedTask held_task, chain_held_task, map_held_task;
    {
      auto first = claim_all(store, flows);
      // `queued`'s task is given back as if never claimed (its attempt refunded).
      give_back(store, task(first, queued, "only"));
      held_task = task(first, held, "only");
      fail(store, task(first, retrying, "only"), "flaky", false);
      complete(store, task(first, chain, "a"));
      complete(store, task(first, chain_held, "a"));
      complete(store, task(first, mapped, "each", 0));
      map_held_task = task(first, mapped, "each", 1);
      complete(store, task(first, done, "only"));
      fail(store, task(first, failed, "only"), "broken", true);
      // The map step's task 2 and cancelled's a are given back unstarted.
      give_back(store, task(first, mapped, "each", 2));
      give_back(store, task(first, cancelled, "a"));
      auto c = store.cancel_run(cancelled);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
    }
    {
      // b of chain_held becomes ready now and is claimed by the old worker; the others are left
      // queued.
      auto second = claim_all(store, flows);
      chain_held_task = task(second, chain_held, "b");
      CHECK(second.size() == 4);  // and chain's b, mapped's task 2, queued's task, given back
      std::vector<fd::Release> back;
      for (const auto& [where, t] : second)
        if (t.id != chain_held_task.id) back.push_back({t.id, t.attempt, false});
      auto ok = store.release("old-worker", back);
      REQUIRE_MESSAGE(ok, flowreg::testing::failure_text(ok));
      CHECK(ok->size() == 3);
      CHECK(chain_held_task.input == Json{{"a", {{"echo", {{"c", 5}}}}}});
    }
    const auto ended_before = [&] {
      std::map<std::string, std::string> out;
      for (const auto& r : {done, failed, cancelled}) {
        const auto info = run_info(store, r);
        out[r] = std::string(fd::to_string(info.status)) + " " +
                 info.output.value_or(Json()).dump() + " " + info.error.value_or("");
      }
      return out;
    }();

    // What the release before 0008 left: every task holds its input (copied when it was
    // created), a single step's completed task its output, the foreign keys exist, and a run
    // counts down all its steps (remaining_steps), not its leaves.
    exec(db, kBefore0012);
    exec(db,
         "UPDATE flowreg.tasks t SET input = CASE WHEN cardinality(fs.deps) = 0 THEN r.input"
         "  ELSE (SELECT jsonb_object_agg(d.step_slug, d.output) FROM flowreg.step_states d"
         "        WHERE d.run_id = t.run_id AND d.step_slug = ANY (fs.deps)) END"
         " FROM flowreg.runs r, flowreg.flow_steps fs"
         " WHERE t.input IS NULL AND r.id = t.run_id AND fs.flow_slug = t.flow_slug"
         "   AND fs.version = t.flow_version AND fs.step_slug = t.step_slug;"
         "UPDATE flowreg.tasks t SET output = s.output FROM flowreg.step_states s"
         " WHERE t.status = 'completed' AND t.output IS NULL AND s.run_id = t.run_id"
         "   AND s.step_slug = t.step_slug AND s.kind = 'single';"
         "ALTER TABLE flowreg.tasks ALTER COLUMN input SET NOT NULL;"
         "ALTER TABLE flowreg.step_states ADD CONSTRAINT step_states_run_id_fkey"
         "  FOREIGN KEY (run_id) REFERENCES flowreg.runs ON DELETE CASCADE;"
         "ALTER TABLE flowreg.tasks ADD CONSTRAINT tasks_run_id_step_slug_fkey"
         "  FOREIGN KEY (run_id, step_slug) REFERENCES flowreg.step_states ON DELETE CASCADE;"
         // Runs had their foreign key to flows until 0011, and no trigger guarded flows.
         "ALTER TABLE flowreg.runs ADD CONSTRAINT runs_flow_slug_flow_version_fkey"
         "  FOREIGN KEY (flow_slug, flow_version) REFERENCES flowreg.flows;"
         "DROP TRIGGER flows_keep_used_versions ON flowreg.flows;"
         "DROP TRIGGER flows_keep_used_versions_truncate ON flowreg.flows;"
         "DROP FUNCTION flowreg._guard_flow_delete();"
         "ALTER TABLE flowreg.runs RENAME COLUMN remaining_leaves TO remaining_steps;"
         "UPDATE flowreg.runs r SET remaining_steps = (SELECT count(*) FROM flowreg.step_states s"
         "  WHERE s.run_id = r.id AND s.status <> 'completed') WHERE r.status = 'started';"
         // Nor had it 0009's columns (the rows 0009 deletes are gone already: tasks of ended
         // runs, of finished single steps).
         "ALTER TABLE flowreg.step_states DROP COLUMN attempts, DROP COLUMN worker_id;"
         "DELETE FROM public.flowreg_migrations"
         " WHERE version IN (8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, "
         "26, 27, 28, 29, 30, 31, 32, 33, 34);"
         "DELETE FROM public.flowreg_functions;");
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.tasks WHERE input IS NULL") == "0");
    const std::string fkeys =
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND (conrelid IN "
        "('flowreg.tasks'::regclass, 'flowreg.step_states'::regclass) OR (conrelid = "
        "'flowreg.runs'::regclass AND confrelid = 'flowreg.flows'::regclass))";
    REQUIRE(q(db, fkeys) == "3");
    REQUIRE(q(db, "SELECT remaining_steps FROM flowreg.runs WHERE id = '" + mapped + "'") == "2");

    // The upgrade, while the old worker still holds three tasks.
    CHECK(upgrade(db) == std::vector<int>({8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                           22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34}));
    CHECK(q(db, fkeys) == "0");
    // In the key's place, the trigger refuses to delete a flow version that has runs.
    {
      pqxx::connection conn(db);
      pqxx::work tx(conn);
      CHECK_THROWS_WITH_AS(tx.exec0("DELETE FROM flowreg.flows WHERE slug = 'single'"),
                           doctest::Contains("cannot be deleted"), pqxx::sql_error);
    }
    // Each started run counts its leaf steps not completed: 1 each here (mapped's sum, chain's b,
    // the single steps), where chain had 1 step left and mapped 2.
    CHECK(q(db,
            "SELECT string_agg(remaining_leaves::text, ',') FROM flowreg.runs WHERE status = "
            "'started'") == "1,1,1,1,1,1");
    CHECK(q(db,
            "SELECT is_nullable FROM information_schema.columns WHERE table_schema = 'flowreg' "
            "AND table_name = 'tasks' AND column_name = 'input'") == "YES");

    fd::RunStore after = connect(db);
    // The old worker's results of its held attempts are accepted (fencing by attempt as before).
    for (const auto* t : {&held_task, &chain_held_task, &map_held_task}) complete(after, *t);
    // A new run of each flow, started after the upgrade, in the new layout.
    const auto fresh_single = start(after, single, Json{{"n", 9}});
    const auto fresh_chain = start(after, pipe, Json{{"n", 10}});
    const auto fresh_map = start(after, fan, Json::array({1, 2}));
    // The new layout for the runs started after the upgrade: a single step's task does not store
    // its input (the claim reads it), a map step's task stores its element.
    const std::string fresh_ids =
        "('" + fresh_single + "', '" + fresh_chain + "', '" + fresh_map + "')";
    CHECK(q(db,
            "SELECT count(*) FROM flowreg.tasks t JOIN flowreg.step_states s USING (run_id, "
            "step_slug) WHERE t.run_id IN " +
                fresh_ids + " AND s.kind = 'single' AND t.input IS NOT NULL") == "0");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks WHERE run_id IN " + fresh_ids +
                    " AND step_slug = 'each' AND input IS NOT NULL") == "2");

    // Finish everything (run/step/index -> the input its claim returned).
    const std::map<std::string, Json> inputs = finish_all(after, db, flows);
    INFO("tasks of runs not ended: " << q(
             db,
             "SELECT string_agg(t.step_slug || ' ' || t.task_index || ' ' || t.status || ' "
             "' || t.attempt || ' ' || t.available_at, '; ') FROM flowreg.tasks t JOIN "
             "flowreg.runs r ON r.id = t.run_id WHERE r.status = 'started'"));
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.runs WHERE status = 'started'") == "0");

    // Each task got the input it had in the old layout, or would have had.
    CHECK(inputs.at(queued + "/only/0") == Json{{"q", 1}});
    CHECK(inputs.at(retrying + "/only/0") == Json{{"r", 3}});
    CHECK(inputs.at(chain + "/b/0") == Json{{"a", {{"echo", {{"c", 4}}}}}});
    CHECK(inputs.at(mapped + "/each/2") == Json(30));
    CHECK(inputs.at(fresh_single + "/only/0") == Json{{"n", 9}});
    CHECK(inputs.at(fresh_chain + "/a/0") == Json{{"n", 10}});
    CHECK(inputs.at(fresh_chain + "/b/0") == Json{{"a", {{"echo", {{"n", 10}}}}}});
    CHECK(inputs.at(fresh_map + "/each/1") == Json(2));

    const auto output = [&](const fd::RunId& run) {
      const auto info = run_info(after, run);
      CHECK_MESSAGE(info.status == fd::RunStatus::completed, run);
      return info.output.value_or(Json());
    };
    CHECK(output(queued) == Json{{"only", {{"echo", {{"q", 1}}}}}});
    CHECK(output(held) == Json{{"only", {{"echo", {{"h", 2}}}}}});
    CHECK(output(retrying) == Json{{"only", {{"echo", {{"r", 3}}}}}});
    CHECK(output(chain) == Json{{"b", {{"echo", {{"a", {{"echo", {{"c", 4}}}}}}}}}});
    CHECK(output(chain_held) == Json{{"b", {{"echo", {{"a", {{"echo", {{"c", 5}}}}}}}}}});
    const Json each = Json::array({Json{{"echo", 10}}, Json{{"echo", 20}}, Json{{"echo", 30}}});
    CHECK(output(mapped) == Json{{"sum", {{"echo", {{"each", each}}}}}});
    CHECK(output(fresh_single) == Json{{"only", {{"echo", {{"n", 9}}}}}});
    CHECK(output(fresh_chain) == Json{{"b", {{"echo", {{"a", {{"echo", {{"n", 10}}}}}}}}}});
    const Json each2 = Json::array({Json{{"echo", 1}}, Json{{"echo", 2}}});
    CHECK(output(fresh_map) == Json{{"sum", {{"echo", {{"each", each2}}}}}});

    // The retried task ran twice; the runs that had ended are as they were.
    auto steps = after.run_steps(retrying);
    REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
    REQUIRE(steps->size() == 1);
    CHECK(steps->front().attempts == 2);
    for (const auto& [run, was] : ended_before) {
      const auto info = run_info(after, run);
      CHECK(std::string(fd::to_string(info.status)) + " " + info.output.value_or(Json()).dump() +
                " " + info.error.value_or("") ==
            was);
    }

    // Every task has left the queue (migration 0009): the outputs are in the step states.
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");

    // prune deletes runs with their steps and tasks (no foreign key cascades any more).
    auto pruned = after.prune(std::chrono::milliseconds(0));
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 12);
    CHECK(q(db,
            "SELECT (SELECT count(*) FROM flowreg.runs) + (SELECT count(*) FROM "
            "flowreg.step_states) + (SELECT count(*) FROM flowreg.tasks)") == "0");
  }
}

namespace {

// "step status attempts" of each step of the run, in step order.
std::string steps_of(fd::RunStore& store, const fd::RunId& run) {
  auto steps = store.run_steps(run);
  REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
  std::string out;
  for (const auto& s : *steps)
    out += s.slug + " " + s.status + " " + std::to_string(s.attempts) + ";";
  return out;
}

// Every field of a run's steps that a reader sees, timestamps included, one line per step.
std::string step_rows_of(fd::RunStore& store, const fd::RunId& run) {
  auto steps = store.run_steps(run);
  REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
  const auto us = [](const std::optional<fd::TimePoint>& t) {
    return t ? std::to_string(
                   std::chrono::duration_cast<std::chrono::microseconds>(t->time_since_epoch())
                       .count())
             : std::string("-");
  };
  std::string out;
  for (const auto& s : *steps)
    out += s.slug + " " + s.status + " tasks " + std::to_string(s.task_count) + " attempts " +
           std::to_string(s.attempts) + " worker " + s.worker.value_or("-") + " started " +
           us(s.started_at) + " finished " + us(s.finished_at) + " error " + s.error.value_or("-") +
           " output " + (s.output ? s.output->dump() : "-") + "\n";
  return out;
}

}  // namespace

TEST_SUITE("live_upgrade") {
  TEST_CASE("migration 0009 folds finished tasks into their step states and takes over live runs") {
    Migrated m = migrated_database("lu_0009");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, flows] = live;

    const auto queued = start(store, single, Json{{"q", 1}});          // never claimed
    const auto held = start(store, single, Json{{"h", 2}});            // claimed, still running
    const auto retrying = start(store, single, Json{{"r", 3}});        // failed once, retry due
    const auto chain = start(store, pipe, Json{{"c", 4}});             // a done, b queued
    const auto mapped = start(store, fan, Json::array({10, 20, 30}));  // 0 done, 1 running, 2 new
    const auto done = start(store, single, Json{{"d", 6}});
    const auto failed = start(store, single, Json{{"f", 7}});
    const auto cancelled = start(store, pipe, Json{{"x", 8}});  // a claimed, then cancelled

    fd::ClaimedTask held_task, map_held_task;
    {
      auto first = claim_all(store, flows);
      give_back(store, task(first, queued, "only"));
      held_task = task(first, held, "only");
      fail(store, task(first, retrying, "only"), "flaky", false);
      complete(store, task(first, chain, "a"));
      complete(store, task(first, mapped, "each", 0));
      map_held_task = task(first, mapped, "each", 1);
      complete(store, task(first, done, "only"));
      fail(store, task(first, failed, "only"), "broken", true);
      give_back(store, task(first, mapped, "each", 2));
      auto c = store.cancel_run(cancelled);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
    }
    const std::vector<fd::RunId> all{queued, held, retrying, chain,
                                     mapped, done, failed,   cancelled};
    std::map<fd::RunId, std::string> steps_before;
    for (const auto& r : all) steps_before[r] = steps_of(store, r);
    CHECK(steps_before[done] == "only completed 1;");
    CHECK(steps_before[cancelled] == "a cancelled 1;b cancelled 0;");
    CHECK(steps_before[mapped] == "each started 2;sum created 0;");

    // What the release before 0009 left: a row for every task that ever existed, the finished ones
    // marked completed, failed or cancelled with their attempts and worker (one row stands for the
    // tasks of each finished step here); a single step's queued task that copied its input (from
    // before 0008); no attempts or worker in step states.
    exec(db, kBefore0012);
    exec(db,
         "INSERT INTO flowreg.tasks (run_id, step_slug, task_index, flow_slug, flow_version,"
         "  status, attempt, max_attempts, base_delay_ms, max_delay_ms, timeout_ms, input, output,"
         "  worker_id, started_at, finished_at)"
         " SELECT s.run_id, s.step_slug, 0, r.flow_slug, r.flow_version,"
         "  CASE s.status WHEN 'completed' THEN 'completed' WHEN 'failed' THEN 'failed'"
         "       ELSE 'cancelled' END, s.attempts, 3, 300, 300, 60000, NULL,"
         "  CASE WHEN s.status = 'completed' THEN s.output END, s.worker_id, now(), now()"
         " FROM flowreg.step_states s JOIN flowreg.runs r ON r.id = s.run_id"
         " WHERE s.task_count > 0 AND s.status IN ('completed', 'failed', 'cancelled')"
         "   AND NOT EXISTS (SELECT 1 FROM flowreg.tasks t WHERE t.run_id = s.run_id"
         "                   AND t.step_slug = s.step_slug);"
         "UPDATE flowreg.tasks t SET input = r.input FROM flowreg.runs r"
         " WHERE r.id = t.run_id AND t.run_id = '" +
             queued +
             "';"
             "ALTER TABLE flowreg.step_states DROP COLUMN attempts, DROP COLUMN worker_id;"
             "DELETE FROM public.flowreg_migrations WHERE version IN (9, 10, 11, 12, 13, 14, 15, "
             "16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34);"
             "DELETE FROM public.flowreg_functions;");
    // Finished rows: done's, failed's, chain's a, cancelled's a, and mapped's completed task 0.
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.tasks WHERE status NOT IN ('queued', 'started')") ==
            "5");

    // The upgrade, while the old worker holds two tasks.
    CHECK(upgrade(db) == std::vector<int>({9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                           22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34}));
    fd::RunStore after = connect(db);
    // Only the live tasks stay, with mapped's completed task 0 (its output is part of its step's).
    CHECK(q(db,
            "SELECT string_agg(step_slug || task_index || ' ' || status, ',' ORDER BY step_slug, "
            "task_index) FROM flowreg.tasks WHERE status NOT IN ('queued', 'started')") ==
          "each0 completed");
    CHECK(q(db,
            "SELECT count(*) FROM flowreg.tasks t JOIN flowreg.step_states s USING (run_id, "
            "step_slug) WHERE s.kind = 'single' AND t.input IS NOT NULL") == "0");
    // Every step counts the attempts it counted before, and names the worker of its last result.
    for (const auto& r : all) CHECK_MESSAGE(steps_of(after, r) == steps_before[r], r);
    CHECK(q(db, "SELECT worker_id FROM flowreg.step_states WHERE run_id = '" + done + "'") ==
          "old-worker");

    // The old worker's held attempts are accepted; everything else finishes.
    for (const auto* t : {&held_task, &map_held_task}) complete(after, *t);
    const std::map<std::string, Json> inputs = finish_all(after, db, flows);
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.runs WHERE status = 'started'") == "0");
    // queued's task lost its copy of the input and got the same input from the run.
    CHECK(inputs.at(queued + "/only/0") == Json{{"q", 1}});
    CHECK(run_info(after, queued).output == Json{{"only", {{"echo", {{"q", 1}}}}}});
    const Json each = Json::array({Json{{"echo", 10}}, Json{{"echo", 20}}, Json{{"echo", 30}}});
    CHECK(run_info(after, mapped).output == Json{{"sum", {{"echo", {{"each", each}}}}}});
    CHECK(steps_of(after, retrying) == "only completed 2;");
    CHECK(steps_of(after, mapped) == "each completed 3;sum completed 1;");
    CHECK(steps_of(after, held) == "only completed 1;");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");
  }

  TEST_CASE("migration 0012 moves the live runs of one-step flows into their rows") {
    Migrated m = migrated_database("lu_0012");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, flows] = live;

    const auto queued = start(store, single, Json{{"q", 1}});     // claimed, released
    const auto held = start(store, single, Json{{"h", 2}});       // claimed, still running
    const auto retrying = start(store, single, Json{{"r", 3}});   // failed once, retry due
    const auto done = start(store, single, Json{{"d", 4}});       // completed
    const auto failed = start(store, single, Json{{"f", 5}});     // failed for good
    const auto cancelled = start(store, single, Json{{"x", 6}});  // claimed, then cancelled
    const auto chain = start(store, pipe, Json{{"c", 7}});        // a done, b queued
    const std::vector<fd::RunId> singles{queued, held, retrying, done, failed, cancelled};
    const std::vector<fd::RunId> all{queued, held, retrying, done, failed, cancelled, chain};
    const auto in_list = [](const std::vector<fd::RunId>& ids) {
      std::string out;
      for (const auto& id : ids) out += (out.empty() ? "'" : ", '") + id + "'";
      return "(" + out + ")";
    };
    // This release: a one-step flow's run writes no step state.
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.step_states WHERE run_id IN " + in_list(singles)) ==
            "0");
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.runs WHERE attempts = 0") == "6");

    fd::ClaimedTask held_task;
    {
      auto first = claim_all(store, flows);
      give_back(store, task(first, queued, "only"));
      held_task = task(first, held, "only");
      fail(store, task(first, retrying, "only"), "flaky", false);
      complete(store, task(first, done, "only"));
      complete(store, task(first, chain, "a"));
      fail(store, task(first, failed, "only"), "broken", true);
      auto c = store.cancel_run(cancelled);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
    }
    std::map<fd::RunId, std::string> steps_before;
    for (const auto& r : all) steps_before[r] = steps_of(store, r);
    CHECK(steps_before[queued] == "only started 0;");
    CHECK(steps_before[held] == "only started 1;");
    CHECK(steps_before[retrying] == "only started 1;");
    CHECK(steps_before[done] == "only completed 1;");
    CHECK(steps_before[failed] == "only failed 1;");
    CHECK(steps_before[cancelled] == "only cancelled 1;");
    CHECK(steps_before[chain] == "a completed 1;b started 0;");
    const auto failed_step = store.run_steps(failed);
    REQUIRE(failed_step);
    REQUIRE(failed_step->size() == 1);
    CHECK(failed_step->front().error == run_info(store, failed).error);
    REQUIRE(failed_step->front().error);
    CHECK(failed_step->front().error->find("broken") != std::string::npos);

    // What the release before 0012 left: a step state for every run.
    exec(db, kBefore0012 +
                 "DELETE FROM public.flowreg_migrations WHERE version IN (12, 13, 14, 15, 16, 17, "
                 "18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34);");
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.step_states") == "8");

    // The upgrade, while the old worker holds one task.
    CHECK(upgrade(db) == std::vector<int>({12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                                           24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34}));
    fd::RunStore after = connect(db);
    // The live runs of the one-step flow moved: their step's attempts and worker are in the run,
    // their step state is gone. Finished runs and the chain keep their rows.
    CHECK(q(db,
            "SELECT string_agg(coalesce(r.attempts::text, '-') || '/' || coalesce(r.worker_id, '-')"
            " || '/' || (SELECT count(*) FROM flowreg.step_states s WHERE s.run_id = r.id), ','"
            " ORDER BY r.input::text) FROM flowreg.runs r") ==
          // inputs in text order: c, d, f, h, q, r, x (the chain c moved too, by 0017: only its
          // ended step a keeps a step state)
          "-/-/1,-/-/1,-/-/1,0/-/0,0/-/0,0/-/0,-/-/1");
    // Every run shows the steps it showed before.
    for (const auto& r : all) CHECK_MESSAGE(steps_of(after, r) == steps_before[r], r);
    CHECK(q(db, "SELECT worker_id FROM flowreg.steps WHERE run_id = '" + done + "'") ==
          "old-worker");

    // A start that was waiting for the upgrade's lock on runs while it committed ran the
    // previous start_runs: its run has the layout before 0012 (and 0013: its task is not solo).
    const auto straggler = start(after, single, Json{{"s", 9}});
    exec(db,
         "INSERT INTO flowreg.step_states SELECT v.run_id, v.step_slug, v.step_index, v.kind,"
         " v.status, v.remaining_deps, v.remaining_tasks, v.task_count, v.output, v.error,"
         " v.started_at, v.finished_at, v.attempts, v.worker_id FROM flowreg.steps v"
         " WHERE v.run_id = '" +
             straggler + "'; UPDATE flowreg.runs SET attempts = NULL, task_id = NULL WHERE id = '" +
             straggler + "'; UPDATE flowreg.tasks SET solo = false WHERE run_id = '" + straggler +
             "'");
    REQUIRE(steps_of(after, straggler) == "only started 0;");

    // The old worker's held attempt is accepted; everything else finishes.
    complete(after, held_task);
    const std::map<std::string, Json> inputs = finish_all(after, db, flows);
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.runs WHERE status = 'started'") == "0");
    // The straggler completed in both places: its run and its step state.
    CHECK(run_info(after, straggler).output == Json{{"only", {{"echo", {{"s", 9}}}}}});
    CHECK(q(db,
            "SELECT status || ' ' || attempts || ' ' || worker_id || ' ' || output::text FROM "
            "flowreg.step_states WHERE run_id = '" +
                straggler + "'") == "completed 1 old-worker {\"echo\": {\"s\": 9}}");
    CHECK(steps_of(after, straggler) == "only completed 1;");
    CHECK(inputs.at(queued + "/only/0") == Json{{"q", 1}});
    CHECK(run_info(after, queued).output == Json{{"only", {{"echo", {{"q", 1}}}}}});
    CHECK(run_info(after, held).output == Json{{"only", {{"echo", {{"h", 2}}}}}});
    CHECK(run_info(after, retrying).output == Json{{"only", {{"echo", {{"r", 3}}}}}});
    CHECK(steps_of(after, queued) == "only completed 1;");
    CHECK(steps_of(after, held) == "only completed 1;");
    CHECK(steps_of(after, retrying) == "only completed 2;");
    CHECK(steps_of(after, chain) == "a completed 1;b completed 1;");
    CHECK(q(db, "SELECT worker_id FROM flowreg.steps WHERE run_id = '" + held + "'") ==
          "old-worker");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");
    // New runs of the one-step flow take the new layout.
    const auto fresh = start(after, single, Json{{"n", 8}});
    CHECK(q(db, "SELECT attempts FROM flowreg.runs WHERE id = '" + fresh + "'") == "0");
    CHECK(q(db, "SELECT count(*) FROM flowreg.step_states WHERE run_id = '" + fresh + "'") == "0");
  }
  TEST_CASE(
      "migration 0013 keeps live runs' tasks findable by run; new one-step runs name theirs") {
    Migrated m = migrated_database("lu_0013");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, flows] = live;

    const auto queued = start(store, single, Json{{"q", 1}});          // claimed, released
    const auto held = start(store, single, Json{{"h", 2}});            // claimed, still running
    const auto retrying = start(store, single, Json{{"r", 3}});        // failed once, retry due
    const auto done = start(store, single, Json{{"d", 4}});            // completed
    const auto failed = start(store, single, Json{{"f", 5}});          // failed for good
    const auto doomed = start(store, single, Json{{"x", 6}});          // cancelled after upgrade
    const auto chain = start(store, pipe, Json{{"c", 7}});             // a done, b queued
    const auto mapped = start(store, fan, Json::array({10, 20, 30}));  // 0 done, 1 running, 2 new
    const std::vector<fd::RunId> all{queued, held, retrying, done, failed, doomed, chain, mapped};
    // This release: each one-step run names its task, which is solo; the others' are not.
    REQUIRE(q(db,
              "SELECT count(*) FROM flowreg.runs r JOIN flowreg.tasks t ON t.id = r.task_id"
              " AND t.run_id = r.id AND t.solo") == "6");
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.tasks WHERE NOT solo") == "4");

    fd::ClaimedTask held_task, map_held_task;
    {
      auto first = claim_all(store, flows);
      give_back(store, task(first, queued, "only"));
      held_task = task(first, held, "only");
      fail(store, task(first, retrying, "only"), "flaky", false);
      complete(store, task(first, done, "only"));
      fail(store, task(first, failed, "only"), "broken", true);
      give_back(store, task(first, doomed, "only"));
      complete(store, task(first, chain, "a"));
      complete(store, task(first, mapped, "each", 0));
      map_held_task = task(first, mapped, "each", 1);
      give_back(store, task(first, mapped, "each", 2));
    }
    std::map<fd::RunId, std::string> steps_before;
    for (const auto& r : all) steps_before[r] = steps_of(store, r);
    CHECK(steps_before[queued] == "only started 0;");
    CHECK(steps_before[held] == "only started 1;");
    CHECK(steps_before[retrying] == "only started 1;");
    CHECK(steps_before[done] == "only completed 1;");
    CHECK(steps_before[failed] == "only failed 1;");
    CHECK(steps_before[chain] == "a completed 1;b started 0;");
    CHECK(steps_before[mapped] == "each started 2;sum created 0;");

    // What the release before 0013 left: the same rows, every task in the unique index by run.
    exec(db, kBefore0013 +
                 "DELETE FROM public.flowreg_migrations WHERE version IN (13, 14, 15, 16, 17, 18, "
                 "19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34);");
    const std::string indexes =
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname ="
        " 'flowreg' AND tablename = 'tasks'";
    // (The gate indexes of migration 0023 stay: a database upgraded from 0012 has them, unused.)
    REQUIRE(q(db, indexes) ==
            "tasks_gate_running,tasks_gated,tasks_leased,tasks_pkey,tasks_queued,"
            "tasks_run_id_step_slug_task_index_key");

    // The upgrade, while the old worker holds two tasks: nothing moves. The old tasks stay in the
    // new index (not solo) and their runs name none.
    CHECK(upgrade(db) == std::vector<int>({13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                                           24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34}));
    CHECK(q(db, indexes) ==
          "tasks_by_run,tasks_gate_running,tasks_gated,tasks_leased,tasks_pkey,tasks_queued");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks WHERE solo") == "0");
    CHECK(q(db, "SELECT count(*) FROM flowreg.runs WHERE task_id IS NOT NULL") == "0");
    fd::RunStore after = connect(db);
    // Every run shows the steps it showed before (a live task's attempts found by run).
    for (const auto& r : all) CHECK_MESSAGE(steps_of(after, r) == steps_before[r], r);

    // A run started before is cancelled: its task, found by run, leaves the queue.
    {
      auto c = after.cancel_run(doomed);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
      CHECK(q(db, "SELECT count(*) FROM flowreg.tasks WHERE run_id = '" + doomed + "'") == "0");
      CHECK(steps_of(after, doomed) == "only cancelled 0;");
    }

    // A run started now takes the new layout; its live task's attempts show, and a cancel finds
    // its task through the run.
    const auto fresh = start(after, single, Json{{"n", 8}});
    const auto fresh_cancelled = start(after, single, Json{{"n", 9}});
    CHECK(q(db,
            "SELECT t.solo FROM flowreg.runs r JOIN flowreg.tasks t ON t.id = r.task_id"
            " WHERE r.id = '" +
                fresh + "'") == "t");
    {
      // Everything claimable is claimed; all but fresh_cancelled's task is given back.
      const auto second = claim_all(after, flows);
      for (const auto& [where, t] : second)
        if (t.run_id != fresh_cancelled) give_back(after, t);
      CHECK(steps_of(after, fresh_cancelled) == "only started 1;");
      auto c = after.cancel_run(fresh_cancelled);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
      CHECK(q(db, "SELECT count(*) FROM flowreg.tasks WHERE run_id = '" + fresh_cancelled + "'") ==
            "0");
      CHECK(steps_of(after, fresh_cancelled) == "only cancelled 1;");
    }

    // The old worker's held attempts are accepted; everything else finishes.
    complete(after, held_task);
    complete(after, map_held_task);
    const std::map<std::string, Json> inputs = finish_all(after, db, flows);
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.runs WHERE status = 'started'") == "0");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");
    CHECK(inputs.at(queued + "/only/0") == Json{{"q", 1}});
    CHECK(run_info(after, queued).output == Json{{"only", {{"echo", {{"q", 1}}}}}});
    CHECK(run_info(after, held).output == Json{{"only", {{"echo", {{"h", 2}}}}}});
    CHECK(run_info(after, retrying).output == Json{{"only", {{"echo", {{"r", 3}}}}}});
    CHECK(run_info(after, fresh).output == Json{{"only", {{"echo", {{"n", 8}}}}}});
    CHECK(run_info(after, mapped).output ==
          Json{{"sum",
                {{"echo",
                  {{"each", Json::array({Json{{"echo", 10}}, Json{{"echo", 20}},
                                         Json{{"echo", 30}}})}}}}}});
    CHECK(steps_of(after, held) == "only completed 1;");
    CHECK(steps_of(after, retrying) == "only completed 2;");
    CHECK(steps_of(after, fresh) == "only completed 1;");
    CHECK(steps_of(after, chain) == "a completed 1;b completed 1;");
    CHECK(steps_of(after, mapped) == "each completed 3;sum completed 1;");
    CHECK(run_info(after, doomed).status == fd::RunStatus::cancelled);
  }
  TEST_CASE("migration 0014: live tasks that copied their step's attempts fail by the step's") {
    Migrated m = migrated_database("lu_0014");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, flows] = live;

    const auto queued = start(store, single, Json{{"q", 1}});          // claimed, released
    const auto held = start(store, single, Json{{"h", 2}});            // claimed, still running
    const auto retrying = start(store, single, Json{{"r", 3}});        // failed once, retry due
    const auto chain = start(store, pipe, Json{{"c", 4}});             // a running
    const auto mapped = start(store, fan, Json::array({10, 20, 30}));  // 0 done, 1 running, 2 new
    fd::ClaimedTask held_task, chain_task, map_held_task;
    {
      auto first = claim_all(store, flows);
      give_back(store, task(first, queued, "only"));
      held_task = task(first, held, "only");
      fail(store, task(first, retrying, "only"), "flaky", false);
      chain_task = task(first, chain, "a");
      complete(store, task(first, mapped, "each", 0));
      map_held_task = task(first, mapped, "each", 1);
      give_back(store, task(first, mapped, "each", 2));
    }
    // This release: no task copies its step's attempts and delays (only its timeout).
    const std::string copies =
        "SELECT count(*) FROM flowreg.tasks WHERE num_nulls(max_attempts, base_delay_ms,"
        " max_delay_ms, created_at) = 0";
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.tasks") == "7");
    REQUIRE(q(db, copies) == "0");

    // What the release before 0014 left: every task with its copy. The running ones copied
    // an option their versions no longer have (one attempt), as when a version's options change
    // after its tasks were created.
    exec(db, kBefore0014 +
                 "UPDATE flowreg.tasks SET max_attempts = 1"
                 " WHERE status = 'started';"
                 "DELETE FROM public.flowreg_migrations WHERE version IN (14, 15, 16, 17, 18, 19, "
                 "20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34);");
    REQUIRE(q(db, copies) == "7");

    // The upgrade, while the old worker holds three tasks: nothing moves, the copies stay unread.
    CHECK(upgrade(db) == std::vector<int>({14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
                                           25, 26, 27, 28, 29, 30, 31, 32, 33, 34}));
    CHECK(q(db, copies) == "7");
    fd::RunStore after = connect(db);

    // The held tasks' failures find the step's attempts (3), not the copy's (1): they retry.
    fail(after, held_task, "flaky", false);
    fail(after, chain_task, "flaky", false);
    CHECK(q(db,
            "SELECT string_agg(status || ' ' || attempt, ',' ORDER BY id) FROM flowreg.tasks"
            " WHERE id IN (" +
                std::to_string(held_task.id) + ", " + std::to_string(chain_task.id) + ")") ==
          "queued 1,queued 1");
    // A run started now: its task copies the timeout only; a claim returns the step's options.
    const auto fresh = start(after, single, Json{{"n", 8}});
    CHECK(q(db,
            "SELECT num_nulls(t.max_attempts, t.base_delay_ms, t.max_delay_ms, t.created_at)"
            " || ' ' || t.timeout_ms FROM flowreg.tasks t JOIN flowreg.runs r"
            " ON r.task_id = t.id WHERE r.id = '" +
                fresh + "'") == "4 60000");
    complete(after, map_held_task);
    std::this_thread::sleep_for(400ms);  // the retries' delay (300 ms) passes
    {
      auto claimed = after.claim("new-worker", flows, 1000);
      REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
      // queued, held, retrying, fresh (single); chain's a; mapped's task 2.
      CHECK(claimed->size() == 6);
      for (const auto& t : *claimed) {
        CHECK_MESSAGE(t.max_attempts == 3, t.run_id);
        CHECK_MESSAGE(t.timeout == flowreg::Millis(60'000), t.run_id);
        complete(after, t);
      }
    }
    const std::map<std::string, Json> inputs = finish_all(after, db, flows);
    CHECK(q(db, "SELECT count(*) FROM flowreg.runs WHERE status = 'started'") == "0");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");
    CHECK(run_info(after, held).output == Json{{"only", {{"echo", {{"h", 2}}}}}});
    CHECK(steps_of(after, held) == "only completed 2;");
    CHECK(steps_of(after, chain) == "a completed 2;b completed 1;");
    CHECK(steps_of(after, mapped) == "each completed 3;sum completed 1;");
  }

  TEST_CASE(
      "migration 0015: runs of every flow are listed, counted and pruned without their index") {
    Migrated m = migrated_database("lu_0015");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, flows] = live;

    // Runs of the three flows, interleaved, so that a list of every flow's runs merges them: 9
    // that end (one cancelled), then 3 still started.
    for (int i = 0; i < 3; ++i) {
      start(store, single, Json{{"i", i}});
      start(store, pipe, Json{{"i", i}});
      start(store, fan, Json::array({i}));
    }
    const auto cancelled = start(store, single, Json{{"c", 1}});
    {
      auto c = store.cancel_run(cancelled);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
    }
    finish_all(store, db, flows);
    for (int i = 0; i < 3; ++i) start(store, i == 1 ? pipe : single, Json{{"s", i}});
    // The metrics count the runs started in a window that ends 3 s ago: every run is made older.
    exec(db, "UPDATE flowreg.runs SET created_at = created_at - interval '1 hour'");

    // Every list the upgrade must keep: all runs, by status, by flow, and in pages of 2.
    const auto lists = [&](fd::RunStore& s) {
      std::vector<std::vector<std::string>> out;
      out.push_back(run_ids(s.list_runs(fd::RunFilter{std::nullopt, std::nullopt, 100})));
      out.push_back(run_ids(s.list_runs(fd::RunFilter{std::nullopt, fd::RunStatus::started, 100})));
      out.push_back(run_ids(s.list_runs(fd::RunFilter{std::nullopt, fd::RunStatus::completed, 5})));
      out.push_back(run_ids(s.list_runs(fd::RunFilter{"single", std::nullopt, 100})));
      std::vector<std::string> paged;
      std::optional<fd::RunId> before;
      for (int page = 0; page < 20; ++page) {
        auto next = run_ids(s.list_runs(fd::RunFilter{std::nullopt, std::nullopt, 2}, before));
        if (next.empty()) break;
        paged.insert(paged.end(), next.begin(), next.end());
        before = next.back();
      }
      out.push_back(paged);
      return out;
    };
    const auto started_counts = [](fd::RunStore& s) {
      auto counts = s.scrape_counts(fd::ScrapeWindow{});
      REQUIRE_MESSAGE(counts, flowreg::testing::failure_text(counts));
      std::map<std::string, std::int64_t> out;
      for (const auto& r : counts->runs)
        if (r.status == fd::RunStatus::started) out[r.flow_slug] += r.count;
      return out;
    };

    // What the release before 0015 had: the index of runs on created_at alone.
    exec(db, kBefore0015 +
                 "DELETE FROM public.flowreg_migrations WHERE version IN (15, 16, 17, 18, 19, 20, "
                 "21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34);");
    const std::string indexes =
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname ="
        " 'flowreg' AND tablename = 'runs'";
    REQUIRE(q(db, indexes) ==
            "runs_by_created,runs_by_flow,runs_idempotency,runs_pkey,runs_retry_of");
    // The lists as the release before read them, by that index (the same SQL, written with it).
    const std::string newest_first =
        "SELECT string_agg(id::text, ',' ORDER BY created_at DESC, id) FROM flowreg.runs";
    const std::string all_before = q(db, newest_first);
    const auto lists_before = lists(store);
    REQUIRE(lists_before[0].size() == 13);
    std::string joined;
    for (const auto& id : lists_before[0]) joined += (joined.empty() ? "" : ",") + id;
    CHECK(joined == all_before);
    REQUIRE(lists_before[1].size() == 3);
    REQUIRE(lists_before[2].size() == 5);
    REQUIRE(lists_before[3].size() == 6);
    CHECK(lists_before[4] == lists_before[0]);
    const auto counts_before = started_counts(store);
    CHECK(counts_before ==
          std::map<std::string, std::int64_t>{{"fan", 3}, {"pipe", 4}, {"single", 6}});

    // The upgrade: the index goes (0028 adds its index of child runs), nothing else changes.
    CHECK(upgrade(db) == std::vector<int>({15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
                                           25, 26, 27, 28, 29, 30, 31, 32, 33, 34}));
    CHECK(q(db, indexes) == "runs_by_flow,runs_by_parent,runs_idempotency,runs_pkey,runs_retry_of");
    fd::RunStore after = connect(db);
    CHECK(lists(after) == lists_before);
    CHECK(started_counts(after) == counts_before);

    // prune finds the 10 ended runs (one cancelled) through runs_by_flow, flow by flow.
    auto pruned = after.prune(std::chrono::milliseconds(0));
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 10);
    CHECK(run_ids(after.list_runs()) == lists_before[1]);
  }
  TEST_CASE("migration 0016: queued tasks and each flow's runs are found by the hashed keys") {
    Migrated m = migrated_database("lu_0016");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, flows] = live;
    // Another version of `single` (another shape): a worker of the first does not take its tasks.
    const fd::FlowKey single2 = flowreg::pgtest::store_flow(
        store, "single", {step("only"), step("then", {"only"})}, quick_retries());
    REQUIRE(single2.version != single.version);

    std::vector<fd::RunId> ended;
    for (int i = 0; i < 2; ++i)
      ended.push_back(start(store, i == 0 ? single : pipe, Json{{"e", i}}));
    finish_all(store, db, flows);
    const auto ready = start(store, single, Json{{"r", 1}});       // claimed, given back
    const auto held = start(store, single, Json{{"h", 2}});        // claimed, still running
    const auto later = start(store, single, Json{{"l", 3}});       // failed once, retry in 1 h
    const auto other = start(store, single2, Json{{"o", 4}});      // the other version's
    const auto chain = start(store, pipe, Json{{"c", 5}});         // a done, b queued
    const auto mapped = start(store, fan, Json::array({10, 20}));  // 0 done, 1 given back
    fd::ClaimedTask held_task;
    {
      auto first = claim_all(store, flows);
      REQUIRE(first.size() == 6);
      give_back(store, task(first, ready, "only"));
      held_task = task(first, held, "only");
      fail(store, task(first, later, "only"), "flaky", false);
      complete(store, task(first, chain, "a"));
      complete(store, task(first, mapped, "each", 0));
      give_back(store, task(first, mapped, "each", 1));
    }
    exec(db,
         "UPDATE flowreg.tasks SET available_at = now() + interval '1 hour'"
         " WHERE run_id = '" +
             later + "'");
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.tasks WHERE status = 'queued'") == "5");

    // What the release before 0016 had: both indexes keyed by the names, built over these rows
    // (they are made first: this release's functions write 0017's columns).
    exec(db, kBefore0016 +
                 "DELETE FROM public.flowreg_migrations WHERE version IN (16, 17, 18, 19, 20, 21, "
                 "22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34);");
    const std::string keys =
        "SELECT string_agg(indexdef, ' | ' ORDER BY indexname) FROM pg_indexes WHERE schemaname"
        " = 'flowreg' AND indexname IN ('tasks_queued', 'runs_by_flow')";
    REQUIRE(q(db, keys).find("hashtextextended") == std::string::npos);

    const auto lists = [&](fd::RunStore& s) {
      std::vector<std::vector<std::string>> out;
      out.push_back(run_ids(s.list_runs(fd::RunFilter{std::nullopt, std::nullopt, 100})));
      out.push_back(run_ids(s.list_runs(fd::RunFilter{"single", std::nullopt, 100})));
      out.push_back(run_ids(s.list_runs(fd::RunFilter{"pipe", fd::RunStatus::completed, 100})));
      out.push_back(run_ids(s.list_runs(fd::RunFilter{std::nullopt, std::nullopt, 3},
                                        std::optional<fd::RunId>(chain))));
      return out;
    };
    const auto lists_before = lists(store);
    REQUIRE(lists_before[0].size() == 8);
    REQUIRE(lists_before[1].size() == 5);  // both versions of single
    REQUIRE(lists_before[2] == std::vector<std::string>{ended[1]});

    // The upgrade, while the old worker holds one task: both indexes are built again, hashed.
    CHECK(upgrade(db) == std::vector<int>({16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
                                           30, 31, 32, 33, 34}));
    CHECK(q(db, keys) ==
          "CREATE INDEX runs_by_flow ON flowreg.runs USING btree (hashtextextended(flow_slug, "
          "(0)::bigint), created_at DESC) | CREATE INDEX tasks_queued ON flowreg.tasks USING btree"
          " (hashtextextended(((flow_slug || ' '::text) || flow_version), (0)::bigint),"
          " priority, available_at) WHERE ((status = 'queued'::text) AND (gate IS NULL))");
    fd::RunStore after = connect(db);
    CHECK(lists(after) == lists_before);

    // A worker of single's second version takes its task only.
    {
      auto claimed = after.claim("v2-worker", std::span(&single2, 1), 100);
      REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
      REQUIRE(claimed->size() == 1);
      CHECK((*claimed)[0].run_id == other);
      complete(after, (*claimed)[0]);
    }
    // A worker of the first versions takes the ready ones, and hears when the retry is due.
    {
      auto done = after.work("new-worker", {}, {}, flows, 100, std::nullopt);
      REQUIRE_MESSAGE(done, flowreg::testing::failure_text(done));
      std::set<std::string> got;
      for (const auto& t : done->claimed) got.insert(t.run_id + "/" + t.step_slug);
      CHECK(got == std::set<std::string>{ready + "/only", chain + "/b", mapped + "/each"});
      REQUIRE(done->next_due_in);
      CHECK(*done->next_due_in > flowreg::Millis(3'500'000));
      for (const auto& t : done->claimed) complete(after, t);
    }
    complete(after, held_task);
    exec(db, "UPDATE flowreg.tasks SET available_at = now() WHERE run_id = '" + later + "'");
    std::vector<fd::FlowKey> every = flows;
    every.push_back(single2);
    finish_all(after, db, every);
    CHECK(q(db, "SELECT count(*) FROM flowreg.runs WHERE status <> 'completed'") == "0");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");
    CHECK(run_info(after, later).output == Json{{"only", {{"echo", {{"l", 3}}}}}});
    CHECK(steps_of(after, later) == "only completed 2;");

    // prune finds every run, flow by flow, through the hashed runs_by_flow.
    auto pruned = after.prune(std::chrono::milliseconds(0));
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 8);
    CHECK(run_ids(after.list_runs()).empty());
  }
  TEST_CASE("migration 0017 moves the live runs of chains to step states written as steps end") {
    Migrated m = migrated_database("lu_0017");
    const std::string& db = m.db;
    fd::RunStore& store = m.store;
    const LiveFlows live = store_live_flows(store);
    const auto& [single, pipe, fan, live_flows] = live;
    const fd::FlowKey trio = flowreg::pgtest::store_flow(
        store, "trio", {step("a"), step("b", {"a"}), step("c", {"b"})}, quick_retries());
    std::vector<fd::FlowKey> flows = live_flows;
    flows.push_back(trio);

    // The runs of chains in every state, and a map step's run (not a chain: it keeps its layout).
    const auto fresh = start(store, pipe, Json{{"n", 1}});      // a queued, never claimed
    const auto a_held = start(store, pipe, Json{{"n", 2}});     // a claimed, still running
    const auto a_retry = start(store, pipe, Json{{"n", 3}});    // a failed once, retry due
    const auto b_queued = start(store, pipe, Json{{"n", 4}});   // a done, b queued
    const auto b_held = start(store, pipe, Json{{"n", 5}});     // a done, b running
    const auto done = start(store, pipe, Json{{"n", 6}});       // completed
    const auto failed = start(store, trio, Json{{"n", 7}});     // a done, b failed for good
    const auto cancelled = start(store, trio, Json{{"n", 8}});  // a done, then cancelled
    const auto c_queued = start(store, trio, Json{{"n", 9}});   // a and b done, c queued
    const auto mapped = start(store, fan, Json::array({1, 2}));
    const std::vector<fd::RunId> all{fresh, a_held, a_retry,   b_queued, b_held,
                                     done,  failed, cancelled, c_queued, mapped};
    // This release: a chain's run stores the states of its ended steps only.
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.runs WHERE chained") == "9");
    REQUIRE(q(db,
              "SELECT count(*) FROM flowreg.step_states s JOIN flowreg.runs r ON r.id = s.run_id"
              " WHERE r.chained") == "0");

    fd::ClaimedTask a_held_task, b_held_task;
    {
      auto first = claim_all(store, flows);
      give_back(store, task(first, fresh, "a"));
      a_held_task = task(first, a_held, "a");
      fail(store, task(first, a_retry, "a"), "flaky", false);
      for (const auto& r : {b_queued, b_held, done, failed, cancelled, c_queued})
        complete(store, task(first, r, "a"));
      complete(store, task(first, mapped, "each", 0));
      give_back(store, task(first, mapped, "each", 1));
    }
    {
      // The b steps the first claims made ready; the tasks claimed again (fresh's a, mapped's
      // task 1, and a_retry's a if its retry fell due) are given back unstarted.
      auto second = claim_all(store, flows);
      b_held_task = task(second, b_held, "b");
      complete(store, task(second, done, "b"));
      fail(store, task(second, failed, "b"), "broken", true);
      complete(store, task(second, c_queued, "b"));
      for (const auto& [where, t] : second)
        if (t.run_id != b_held && t.run_id != done && t.run_id != failed && t.run_id != c_queued)
          give_back(store, t);
      auto c = store.cancel_run(cancelled);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
    }
    std::map<fd::RunId, std::string> before;
    for (const auto& r : all) before[r] = steps_of(store, r);
    CHECK(before[fresh] == "a started 0;b created 0;");
    CHECK(before[a_held] == "a started 1;b created 0;");
    CHECK(before[a_retry] == "a started 1;b created 0;");
    CHECK(before[b_queued] == "a completed 1;b started 0;");
    CHECK(before[b_held] == "a completed 1;b started 1;");
    CHECK(before[done] == "a completed 1;b completed 1;");
    CHECK(before[failed] == "a completed 1;b failed 1;c cancelled 0;");
    CHECK(before[cancelled] == "a completed 1;b cancelled 0;c cancelled 0;");
    CHECK(before[c_queued] == "a completed 1;b completed 1;c started 0;");
    // Every field, timestamps included: a started step started when its task was created.
    std::map<fd::RunId, std::string> rows_before;
    for (const auto& r : all) rows_before[r] = step_rows_of(store, r);
    CHECK(rows_before[failed].find("b failed tasks 1 attempts 1 worker old-worker") !=
          std::string::npos);
    CHECK(rows_before[failed].find("broken") != std::string::npos);
    CHECK(rows_before[fresh].find("b created tasks 0 attempts 0 worker - started - finished -") !=
          std::string::npos);

    // What the release before 0017 left: every step of a chain's run in step_states.
    exec(db, kBefore0017 +
                 "DELETE FROM public.flowreg_migrations WHERE version IN (17, 18, 19, 20, 21, 22, "
                 "23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34);");
    REQUIRE(q(db,
              "SELECT count(*) FROM flowreg.step_states s JOIN flowreg.runs r ON"
              " r.id = s.run_id WHERE r.flow_slug IN ('pipe', 'trio')") == "21");
    for (const auto& r : all) CHECK_MESSAGE(step_rows_of(store, r) == rows_before[r], r);

    // The upgrade, while the old worker holds two tasks.
    CHECK(upgrade(db) == std::vector<int>({17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
                                           31, 32, 33, 34}));
    fd::RunStore after = connect(db);
    // The started runs of chains moved: the states of their steps not ended are gone (the view
    // shows them), their tasks are marked, with their step's start. Ended runs keep their rows.
    CHECK(q(db,
            "SELECT string_agg(r.input->>'n' || ':' || r.chained || '/' || (SELECT count(*)"
            " FROM flowreg.step_states s WHERE s.run_id = r.id), ',' ORDER BY r.input->>'n')"
            " FROM flowreg.runs r WHERE r.flow_slug IN ('pipe', 'trio')") ==
          "1:true/0,2:true/0,3:true/0,4:true/1,5:true/1,6:false/2,7:false/3,8:false/3,9:true/2");
    CHECK(q(db,
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE chained AND created_at IS NOT"
            " NULL) FROM flowreg.tasks WHERE flow_slug IN ('pipe', 'trio')") == "6 6");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks WHERE chained AND flow_slug = 'fan'") == "0");
    // Every run shows what it showed before, to the microsecond.
    for (const auto& r : all) CHECK_MESSAGE(step_rows_of(after, r) == rows_before[r], r);

    // A start that was waiting for the upgrade's lock on runs while it committed ran the
    // previous start_runs: its run has the layout before 0017, and goes on in it.
    const auto straggler = start(after, trio, Json{{"n", 10}});
    exec(db,
         "INSERT INTO flowreg.step_states SELECT v.run_id, v.step_slug, v.step_index, v.kind,"
         " v.status, v.remaining_deps, v.remaining_tasks, v.task_count, v.output, v.error,"
         " v.started_at, v.finished_at, v.attempts, v.worker_id FROM flowreg.steps v"
         " WHERE v.run_id = '" +
             straggler + "'; UPDATE flowreg.runs SET chained = false WHERE id = '" + straggler +
             "'; UPDATE flowreg.tasks SET chained = false, created_at = NULL WHERE run_id = '" +
             straggler + "'");
    REQUIRE(steps_of(after, straggler) == "a started 0;b created 0;c created 0;");

    // The old worker's held attempts are accepted; everything else finishes.
    complete(after, a_held_task);
    complete(after, b_held_task);
    const std::map<std::string, Json> inputs = finish_all(after, db, flows);
    REQUIRE(q(db, "SELECT count(*) FROM flowreg.runs WHERE status = 'started'") == "0");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");
    const auto out = [](const Json& in, std::initializer_list<const char*> steps) {
      Json v = in;
      std::string last;
      for (const char* s : steps) {
        v = Json{{"echo", s == std::string("a") ? v : Json{{last, v}}}};
        last = s;
      }
      return Json{{last, v}};
    };
    for (const auto& [r, n] : std::vector<std::pair<fd::RunId, int>>{
             {fresh, 1}, {a_held, 2}, {a_retry, 3}, {b_queued, 4}, {b_held, 5}}) {
      CHECK_MESSAGE(run_info(after, r).output == out(Json{{"n", n}}, {"a", "b"}), r);
      CHECK(steps_of(after, r) ==
            (r == a_retry ? "a completed 2;b completed 1;" : "a completed 1;b completed 1;"));
    }
    CHECK(run_info(after, c_queued).output == out(Json{{"n", 9}}, {"a", "b", "c"}));
    CHECK(inputs.at(c_queued + "/c/0") == Json{{"b", out(Json{{"n", 9}}, {"a", "b"})["b"]}});
    CHECK(steps_of(after, c_queued) == "a completed 1;b completed 1;c completed 1;");
    CHECK(run_info(after, straggler).output == out(Json{{"n", 10}}, {"a", "b", "c"}));
    CHECK(q(db,
            "SELECT string_agg(step_slug || ' ' || status, ',' ORDER BY step_index) FROM"
            " flowreg.step_states WHERE run_id = '" +
                straggler + "'") == "a completed,b completed,c completed");
    for (const auto& r : {done, failed, cancelled})
      CHECK_MESSAGE(step_rows_of(after, r) == rows_before[r], r);

    // New runs of a chain take the new layout, in every way a step ends: completed, failed for
    // good (the steps after it cancelled), cancelled while running.
    const auto ok = start(after, trio, Json{{"n", 11}});
    const auto bad = start(after, trio, Json{{"n", 12}});
    const auto stop = start(after, trio, Json{{"n", 13}});
    CHECK(q(db,
            "SELECT count(*) FROM flowreg.runs WHERE chained AND input->>'n' IN ('11', '12',"
            " '13')") == "3");
    {
      auto first = claim_all(after, flows);
      for (const auto& r : {ok, bad, stop}) complete(after, task(first, r, "a"));
      auto second = claim_all(after, flows);
      complete(after, task(second, ok, "b"));
      fail(after, task(second, bad, "b"), "flaky", false);
      (void)task(second, stop, "b");  // held while the run is cancelled
      auto c = after.cancel_run(stop);
      REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
      CHECK(*c);
    }
    CHECK(steps_of(after, stop) == "a completed 1;b cancelled 1;c cancelled 0;");
    CHECK(step_rows_of(after, stop).find("b cancelled tasks 1 attempts 1 worker - started ") !=
          std::string::npos);
    CHECK(steps_of(after, bad) == "a completed 1;b started 1;c created 0;");
    std::this_thread::sleep_for(400ms);  // the retry falls due
    {
      auto third = claim_all(after, flows);
      fail(after, task(third, bad, "b"), "broken", true);
      complete(after, task(third, ok, "c"));
    }
    CHECK(steps_of(after, bad) == "a completed 1;b failed 2;c cancelled 0;");
    const auto bad_info = run_info(after, bad);
    CHECK(bad_info.status == fd::RunStatus::failed);
    const auto bad_steps = after.run_steps(bad);
    REQUIRE(bad_steps);
    REQUIRE(bad_steps->size() == 3);
    CHECK((*bad_steps)[1].error == bad_info.error);
    CHECK((*bad_steps)[1].worker == "old-worker");
    CHECK((*bad_steps)[1].started_at == (*bad_steps)[0].finished_at);
    CHECK((*bad_steps)[2].finished_at == bad_info.finished_at);
    CHECK(run_info(after, ok).output == out(Json{{"n", 11}}, {"a", "b", "c"}));
    CHECK(steps_of(after, ok) == "a completed 1;b completed 1;c completed 1;");
    CHECK(q(db, "SELECT count(*) FROM flowreg.tasks") == "0");
  }
}
