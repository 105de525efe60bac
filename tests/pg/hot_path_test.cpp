// The run store's hot path under load, through the public API (RunStore, `flowreg worker`):
//   - plan stability: with a 100,000-run backlog, after ANALYZE, claims and completions read a
//     bounded number of tuples per task and scan no large table whole; the same for one long-lived
//     connection starting runs one at a time after its plans were made on small tables;
//   - a result PostgreSQL refuses (U+0000 in a string, JSON nested deeper than jsonb accepts) in
//     the middle of a batch fails that task alone, permanently, with the reason;
//   - several workers completing and failing tasks of the same runs at once: no deadlock in the
//     server's log, no flow-loop restart, every run ends as expected.
//   - the shape of every plan: no statement reads a table of flowreg but through an index
//     condition, or in a walk in index order that a LIMIT stops, with plans made in five states
//     of the statistics (auto_explain's plans, read from the server's log).
// Scans are read from the server's counters (pg_stat_user_tables), summed over every table of
// schema flowreg, so that they hold whatever the tables are.

#include <doctest/doctest.h>
#include <pthread.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/flow.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/result_text.hpp"

namespace fs = std::filesystem;
namespace fd = flowreg::detail;
using flowreg::pgtest::eventually;
using flowreg::pgtest::query_one_or_empty;
using flowreg::pgtest::step;
using flowreg::pgtest::store_flow;
using Json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// A fresh, migrated database with autovacuum off on every table of schema flowreg: statistics and
// cached plans change only when a test says so (ANALYZE), never in the middle of a measurement.
std::string hot_database(const std::string& name) {
  const std::string conninfo = flowreg::pgtest::migrated_database(name);
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  tx.exec(
      "DO $$DECLARE t record; BEGIN FOR t IN SELECT schemaname, tablename FROM pg_tables WHERE "
      "schemaname = 'flowreg' LOOP EXECUTE format('ALTER TABLE %I.%I SET (autovacuum_enabled = "
      "off)', t.schemaname, t.tablename); END LOOP; END$$");
  return conninfo;
}

void analyze_all(const std::string& conninfo) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  tx.exec(
      "DO $$DECLARE t record; BEGIN FOR t IN SELECT schemaname, tablename FROM pg_tables WHERE "
      "schemaname = 'flowreg' LOOP EXECUTE format('ANALYZE %I.%I', t.schemaname, t.tablename); "
      "END LOOP; END$$");
}

fd::RunStore connect(const std::string& conninfo) {
  auto store = fd::RunStore::connect(conninfo);
  REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
  return std::move(*store);
}

// The backlog of the test "plans: after ANALYZE of a 100,000-run backlog ...": 100,000, or
// FLOWREG_HOT_PATH_RUNS (a check at 1,000,000 took 3 minutes on 2 cores: run by hand, not in CI).
int backlog_runs() {
  const char* v = std::getenv("FLOWREG_HOT_PATH_RUNS");
  if (v == nullptr || *v == '\0') return 100'000;
  const int n = std::atoi(v);
  REQUIRE_MESSAGE(n >= 20'000, "FLOWREG_HOT_PATH_RUNS: a number of runs of 20,000 or more");
  return n;
}

void start_many(fd::RunStore& store, const fd::FlowKey& key, int runs) {
  std::vector<Json> inputs;
  for (int i = 0; i < runs; i += 1000) {
    inputs.assign(static_cast<std::size_t>(std::min(1000, runs - i)), Json{{"n", i}});
    auto started = store.start_runs(key.slug, key.version, inputs);
    REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
  }
}

// The scan counters of one table of schema flowreg.
struct TableScans {
  long seq_scan = 0, seq_tup_read = 0, idx_scan = 0, idx_tup_fetch = 0, live = 0;
  long idx_tup_read = 0;  // index entries returned by scans of its indexes
};
using Scans = std::map<std::string, TableScans>;

Scans read_scans(const std::string& conninfo) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  Scans out;
  for (const auto& row : tx.exec(
           "SELECT t.relname, t.seq_scan, t.seq_tup_read, coalesce(t.idx_scan, 0), "
           "coalesce(t.idx_tup_fetch, 0), t.n_live_tup, (SELECT coalesce(sum(i.idx_tup_read), 0) "
           "FROM pg_stat_user_indexes i WHERE i.relid = t.relid) FROM pg_stat_user_tables t "
           "WHERE t.schemaname = 'flowreg'"))
    out[row[0].as<std::string>()] = {row[1].as<long>(), row[2].as<long>(), row[3].as<long>(),
                                     row[4].as<long>(), row[5].as<long>(), row[6].as<long>()};
  return out;
}

long total(const Scans& scans) {
  long sum = 0;
  for (const auto& [table, t] : scans)
    sum += t.seq_scan + t.seq_tup_read + t.idx_scan + t.idx_tup_fetch + t.idx_tup_read;
  return sum;
}

// The counters once every backend has flushed its own. A backend that exited flushed them as it
// exited (wait_alone). One still open, the stores in `open`, flushes them when a transaction ends
// and its last flush is a second old (PostgreSQL 15's PGSTAT_MIN_INTERVAL); what it leaves pending
// otherwise is flushed once it has been idle for 10 s (PGSTAT_IDLE_INTERVAL). So wait over a
// second, have each open store read a run that does not exist (an index probe, before the
// window), then read until two readings 700 ms apart agree. (Reading after a shorter wait without
// that read counted the work just before the measured window in it; waiting 11 s instead cost the
// suite minutes.)
Scans settled_scans(const std::string& conninfo, std::initializer_list<fd::RunStore*> open = {}) {
  if (open.size() > 0) std::this_thread::sleep_for(1100ms);
  for (fd::RunStore* store : open) {
    auto none = store->get_run("00000000-0000-0000-0000-000000000000");
    REQUIRE_MESSAGE(none, flowreg::testing::failure_text(none));
    REQUIRE_FALSE(none->has_value());
  }
  Scans last = read_scans(conninfo);
  for (int i = 0; i < 40; ++i) {
    std::this_thread::sleep_for(700ms);
    Scans now = read_scans(conninfo);
    if (total(now) == total(last)) return now;
    last = std::move(now);
  }
  FAIL("the scan counters did not settle within 30 s");
  return last;
}

// Waits until no other client backend is connected to the database (a closed store's backend
// flushes its counters as it exits).
void wait_alone(const std::string& conninfo) {
  const bool alone = eventually(
      [&] {
        return query_one_or_empty(conninfo,
                                  "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                  "current_database() AND pid <> pg_backend_pid() AND "
                                  "backend_type = 'client backend'") == "0";
      },
      30s);
  REQUIRE(alone);
}

// What the calls between two readings read: rows read by sequential scans of large tables
// (more than 10,000 live rows), and tuples read in all (sequential + fetched through indexes).
struct ReadCost {
  long big_seq_scans = 0, big_seq_rows = 0, tuples = 0, index_entries = 0;
  std::string detail;  // per table, for the failure message
};

ReadCost read_cost(const Scans& before, const Scans& after) {
  ReadCost c;
  for (const auto& [table, a] : after) {
    const auto it = before.find(table);
    const TableScans b = it == before.end() ? TableScans{} : it->second;
    const long seq = a.seq_scan - b.seq_scan, seq_rows = a.seq_tup_read - b.seq_tup_read;
    const long fetched = a.idx_tup_fetch - b.idx_tup_fetch;
    const long entries = a.idx_tup_read - b.idx_tup_read;
    c.tuples += seq_rows + fetched;
    c.index_entries += entries;
    if (a.live > 10'000) {
      c.big_seq_scans += seq;
      c.big_seq_rows += seq_rows;
    }
    c.detail += table + ": " + std::to_string(a.live) + " live, seq_scan +" + std::to_string(seq) +
                " (rows +" + std::to_string(seq_rows) + "), idx_scan +" +
                std::to_string(a.idx_scan - b.idx_scan) + " (entries read +" +
                std::to_string(entries) + ", rows fetched +" + std::to_string(fetched) + ")\n";
  }
  return c;
}

// At most this many tuples read (sequentially or through an index) per task claimed and
// completed, or per run started: plans that walk indexes to their rows read about a dozen (at
// 100,000 runs the lifecycle functions read 9.2 per task of a one-step flow: tasks 5.1, runs 3.1,
// flow_steps 1.0; 13.4 per task of a chain's first step: tasks 5.1, flow_steps 3.1, step_states
// 2.1, runs 2.0, flow_deps 1.0; each row by key; and 7.5 per start_run call); one that scans a
// table or a whole index reads thousands at these sizes (the functions of an earlier release:
// 343,051 per start_run call).
constexpr double kTuplesPerTask = 25;
// The same bound for index entries read (pg_stat_user_indexes.idx_tup_read; 13.3 and 17.5 per
// task, 7.5 per start_run call): a scan over a whole index, or over the entries of every finished
// task, reads thousands per call.
constexpr double kIndexEntriesPerTask = 30;

// Runs `f` on a thread with a 512 MiB stack: JSON nested 100,000 levels deep is written out
// recursively.
void on_big_stack(const std::function<void()>& f) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, std::size_t{512} << 20);
  struct Call {
    const std::function<void()>* f;
    std::exception_ptr error;
  } call{&f, nullptr};
  pthread_t thread;
  const int rc = pthread_create(
      &thread, &attr,
      [](void* p) -> void* {
        auto* c = static_cast<Call*>(p);
        try {
          (*c->f)();
        } catch (...) {
          c->error = std::current_exception();
        }
        return nullptr;
      },
      &call);
  pthread_attr_destroy(&attr);
  REQUIRE(rc == 0);
  pthread_join(thread, nullptr);
  if (call.error) std::rethrow_exception(call.error);
}

// An array nested `depth` levels deep, built without recursion.
Json nested(int depth) {
  Json j = 1;
  for (int i = 0; i < depth; ++i) {
    Json outer = Json::array();
    outer.push_back(std::move(j));
    j = std::move(outer);
  }
  return j;
}

fd::Completion completion(const fd::ClaimedTask& t, Json output) {
  fd::Completion c;
  c.id = t.id;
  c.attempt = t.attempt;
  c.output = std::move(output);
  return c;
}

fd::RunInfo run_info(fd::RunStore& store, const fd::RunId& run) {
  auto info = store.get_run(run);
  REQUIRE_MESSAGE(info, flowreg::testing::failure_text(info));
  REQUIRE(info->has_value());
  return **info;
}

// For the metrics scrape tests.
std::int64_t micros(fd::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

fd::RunId start_one(fd::RunStore& store, const fd::FlowKey& key) {
  auto run = store.start_run(key.slug, key.version, Json::object());
  REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
  return *run;
}

void cancel(fd::RunStore& store, const fd::RunId& run) {
  auto cancelled = store.cancel_run(run);
  REQUIRE_MESSAGE(cancelled, flowreg::testing::failure_text(cancelled));
  REQUIRE(*cancelled);
}

// Claims and completes every task of the flow version, 500 per work() call.
void drain(fd::RunStore& store, const fd::FlowKey& key) {
  std::vector<fd::Completion> pending;
  for (;;) {
    auto r = store.work("w1", pending, {}, std::span(&key, 1), 500, std::nullopt);
    REQUIRE_MESSAGE(r, flowreg::testing::failure_text(r));
    REQUIRE(r->rejected.empty());
    if (pending.empty() && r->claimed.empty()) return;
    pending.clear();
    for (const auto& t : r->claimed) pending.push_back(completion(t, Json{{"ok", 1}}));
  }
}

fd::ScrapeCounts scrape(fd::RunStore& store, std::optional<fd::ScrapeWindow> window,
                        int max_stragglers = 100) {
  auto counts = store.scrape_counts(std::move(window), max_stragglers);
  REQUIRE_MESSAGE(counts, flowreg::testing::failure_text(counts));
  return std::move(*counts);
}

// A scrape on a connection of its own, with the scans of the tables it made. No other session
// may be open (the counters are read once the measured backend has exited).
struct MeasuredScrape {
  fd::ScrapeCounts counts;
  Scans before, after;
  ReadCost cost;
};

MeasuredScrape measured_scrape(const std::string& conninfo, std::optional<fd::ScrapeWindow> window,
                               int max_stragglers = 100) {
  MeasuredScrape m;
  wait_alone(conninfo);
  m.before = settled_scans(conninfo);
  {
    fd::RunStore viewer = connect(conninfo);
    m.counts = scrape(viewer, std::move(window), max_stragglers);
  }  // the measured backend exits and flushes its counters
  wait_alone(conninfo);
  m.after = read_scans(conninfo);
  m.cost = read_cost(m.before, m.after);
  return m;
}

// A scrape that read runs without a scan of the table, fetching and reading fewer than `rows` of
// it through indexes.
void check_runs_read(const MeasuredScrape& m, std::int64_t rows) {
  INFO(m.cost.detail);
  CHECK(m.cost.big_seq_scans == 0);
  const auto& r0 = m.before.at("runs");
  const auto& r1 = m.after.at("runs");
  CHECK(r1.seq_scan == r0.seq_scan);
  CHECK(r1.idx_tup_fetch - r0.idx_tup_fetch < rows);
  CHECK(r1.idx_tup_read - r0.idx_tup_read < rows);
}

// Runs counted per "<flow> <status>".
using Counted = std::map<std::string, std::int64_t>;
Counted counted(const fd::ScrapeCounts& c) {
  Counted out;
  for (const auto& r : c.runs)
    out[r.flow_slug + " " + std::string(fd::to_string(r.status))] += r.count;
  return out;
}

using Stragglers = std::map<std::string, std::set<std::string>>;
Stragglers stragglers(const fd::ScrapeCounts& c) {
  Stragglers out;
  for (const auto& [slug, ids] : c.next.stragglers) out[slug].insert(ids.begin(), ids.end());
  return out;
}

using Bounds = std::map<std::string, std::int64_t, std::less<>>;

void past_scrape_lag() { std::this_thread::sleep_for(3500ms); }  // scrape_counts' 3 s

bool mentions_any(const std::string& text, std::initializer_list<const char*> words) {
  std::string lower;
  for (char ch : text) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* w : words)
    if (lower.find(w) != std::string::npos) return true;
  return false;
}

// 20 valid results and two PostgreSQL refuses, recorded together by `record` (complete() or
// work()): the two fail alone, permanently, with their reason; the 20 complete with their output.
void refused_in_a_batch(
    const std::string& name,
    const std::function<void(fd::RunStore&, std::vector<fd::Completion>&)>& record) {
  const std::string conninfo = hot_database(name);
  auto store = connect(conninfo);
  const auto key = store_flow(store, "refused", {step("only")});
  start_many(store, key, 22);
  auto claimed = store.claim("w1", std::span(&key, 1), 22);
  REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
  REQUIRE(claimed->size() == 22);
  std::vector<fd::Completion> batch;
  std::map<fd::RunId, int> valid;  // run -> its output's i
  fd::RunId nul_run, deep_run;
  for (int i = 0; i < 22; ++i) {
    const auto& t = (*claimed)[static_cast<std::size_t>(i)];
    if (i == 7) {
      nul_run = t.run_id;
      batch.push_back(completion(t, Json{{"text", std::string("x\0y", 3)}}));
    } else if (i == 15) {
      deep_run = t.run_id;
      batch.push_back(completion(t, nested(100'000)));
    } else {
      valid[t.run_id] = i;
      batch.push_back(completion(t, Json{{"i", i}}));
    }
  }
  on_big_stack([&] { record(store, batch); });
  if (store.connection_lost()) store = connect(conninfo);

  for (const auto& [run, i] : valid) {
    CAPTURE(run);
    const auto info = run_info(store, run);
    CHECK(info.status == fd::RunStatus::completed);
    CHECK(info.output == Json{{"only", {{"i", i}}}});
  }
  for (const auto& [run, what] : {std::pair{nul_run, "U+0000 in a string"},
                                  std::pair{deep_run, "JSON nested 100,000 deep"}}) {
    CAPTURE(what);
    const auto info = run_info(store, run);
    CHECK(info.status == fd::RunStatus::failed);  // permanently: at once, on its first attempt
    const std::string error = info.error.value_or("");
    CAPTURE(error);
    CHECK_FALSE(error.empty());
    CHECK(error.find("lease expired") == std::string::npos);
    if (run == nul_run)
      CHECK(mentions_any(error, {"\\u0000", "u+0000", "nul", "null character", "unicode"}));
    else
      CHECK(mentions_any(error, {"nest", "deep", "depth", "stack"}));
    auto steps = store.run_steps(run);
    REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
    REQUIRE(steps->size() == 1);
    CHECK(steps->front().attempts == 1);
  }
}

void open_up(const fs::path& dir) {
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                           fs::perms::others_read | fs::perms::others_exec);
}

void copy_plugin(const fs::path& from, const fs::path& dir) {
  const fs::path to = dir / from.filename();
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  fs::permissions(to, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                          fs::perms::others_read);
}

// A scene whose plugins directory holds `plugins` and whose configuration ends with `flows`.
flowreg::pgtest::WorkerScene make_scene(const std::string& name,
                                        const std::vector<fs::path>& plugins,
                                        const std::string& flows = "") {
  flowreg::pgtest::WorkerScene s;
  s.dir = flowreg::pgtest::test_root() / name;
  fs::remove_all(s.dir);
  fs::create_directories(s.dir / "plugins");
  for (const auto& d : {flowreg::pgtest::test_root(), s.dir, s.dir / "plugins"}) open_up(d);
  for (const auto& p : plugins) copy_plugin(p, s.dir / "plugins");
  s.conninfo = hot_database(name);
  std::ofstream config(s.config());
  config << "module: hot\nplugins:\n  dir: plugins\n  watch: false\ndatabase:\n"
         << "  url: " << Json(s.conninfo).dump() << "\n"
         << "  data_dir: " << Json((s.dir / "data").string()).dump() << "\n"
         << flows;
  return s;
}

// A user's mix of calls on runs of three flows, one of each shape (`fan`: a map step between two
// single steps; `line`: a chain of three; `one`: one step), made through one RunStore (the
// worker's) as a worker and an application make them. Its own queries (picking runs, counting
// those left) go through `conninfo`.
struct CallMix {
  std::string conninfo;
  fd::RunStore& worker;
  std::vector<fd::FlowKey> keys;  // fan, line, one
  std::set<fd::TaskId> given_back, crashed;

  CallMix(std::string conninfo_, fd::RunStore& worker_, std::vector<fd::FlowKey> keys_)
      : conninfo(std::move(conninfo_)), worker(worker_), keys(std::move(keys_)) {}

  static std::vector<flowreg::StepDef> fan() {
    return {step("split"), step("each", {"split"}, flowreg::StepKind::map), step("join", {"each"})};
  }
  static std::vector<flowreg::StepDef> line() {
    return {step("a"), step("b", {"a"}), step("c", {"b"})};
  }
  static std::vector<flowreg::StepDef> one() { return {step("only")}; }

  // Worker cycles over the three flows until nothing is left: a split's output is the map
  // step's input; one task in 5 of steps "each" and "b" fails for good (its run fails, and a
  // map step's other tasks are dropped), by its id; one in 7 is given back once (as at a
  // worker's shutdown: it is queued again) and one in 11 reported as killed by a signal in a
  // worker that died (it fails for good, and its run). The tasks claimed.
  long drain() {
    long tasks = 0;
    std::vector<fd::Completion> done;
    std::vector<fd::Failure> failed;
    for (int i = 0; i < 1000; ++i) {
      auto r = worker.work("w1", done, failed, std::span(keys), 64, std::nullopt);
      REQUIRE_MESSAGE(r, flowreg::testing::failure_text(r));
      done.clear();
      failed.clear();
      std::vector<fd::TaskAttempt> held_tasks;
      for (const auto& t : r->claimed) held_tasks.push_back({t.id, t.attempt});
      auto renewed = worker.renew("w1", held_tasks);  // as a worker's lease keeper does
      REQUIRE_MESSAGE(renewed, flowreg::testing::failure_text(renewed));
      CHECK(renewed->empty());
      std::vector<fd::Release> releases;
      std::vector<fd::CrashReport> crashes;
      for (const auto& t : r->claimed) {
        if (t.id % 7 == 1 && given_back.insert(t.id).second)
          releases.push_back(fd::Release{t.id, t.attempt, false});
        else if (t.id % 11 == 2 && crashed.insert(t.id).second)
          crashes.push_back(fd::CrashReport{t.id, t.attempt, 9});
        else if ((t.step_slug == "each" || t.step_slug == "b") && t.id % 5 == 0)
          failed.push_back(fd::Failure{t.id, t.attempt, "no", true});
        else
          done.push_back(
              completion(t, t.step_slug == "split" ? Json::array({1, 2, 3}) : Json{{"ok", 1}}));
      }
      if (!releases.empty()) {
        auto released = worker.release("w1", releases);
        REQUIRE_MESSAGE(released, flowreg::testing::failure_text(released));
        CHECK(released->size() == releases.size());
      }
      if (!crashes.empty()) {
        auto reported = worker.report_crashes(crashes, 3);
        REQUIRE_MESSAGE(reported, flowreg::testing::failure_text(reported));
        CHECK(reported->size() == crashes.size());
      }
      tasks += static_cast<long>(r->claimed.size());
      if (done.empty() && failed.empty() && releases.empty() && crashes.empty()) break;
    }
    return tasks;
  }

  // The ids of `count` runs matching `where`, oldest first.
  std::vector<fd::RunId> pick(const std::string& where, int count) const {
    std::vector<fd::RunId> runs;
    std::stringstream ids(query_one_or_empty(
        conninfo, "SELECT string_agg(id::text, ' ') FROM (SELECT id FROM flowreg.runs WHERE " +
                      where + " ORDER BY created_at, id LIMIT " + std::to_string(count) + ") x"));
    for (std::string id; ids >> id;) runs.push_back(id);
    return runs;
  }

  // What a user does with runs: retries one that failed, reads one's steps, cancels it and
  // reads it (of each flow, the oldest still started), and starts runs one at a time and in a
  // batch; `count` of each, picked first (the queries picking them are not measured). The
  // calls made.
  std::function<int()> use_runs(int count) const {
    std::vector<fd::RunId> started, failed;
    for (const char* flow : {"fan", "line", "one"}) {
      auto some = pick(std::string("status = 'started' AND flow_slug = '") + flow + "'", count);
      REQUIRE(static_cast<int>(some.size()) == count);
      started.insert(started.end(), some.begin(), some.end());
    }
    failed = pick(
        "status = 'failed' AND flow_slug IN ('fan', 'line') AND id NOT IN (SELECT "
        "retry_of FROM flowreg.runs WHERE retry_of IS NOT NULL)",
        count);
    return [this, started, failed, count] {
      int calls = 0;
      for (const auto& run : failed) {
        auto retried = worker.retry_run(run);
        REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
        // And from its failed step: its completed steps copied, the rest started.
        auto resumed = worker.retry_run(run, fd::RetryFrom::failed_step);
        REQUIRE_MESSAGE(resumed, flowreg::testing::failure_text(resumed));
        calls += 2;
      }
      for (const auto& run : started) {
        auto steps = worker.run_steps(run);
        REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
        auto cancelled = worker.cancel_run(run);
        REQUIRE_MESSAGE(cancelled, flowreg::testing::failure_text(cancelled));
        CHECK(*cancelled);
        auto info = worker.get_run(run);
        REQUIRE_MESSAGE(info, flowreg::testing::failure_text(info));
        calls += 3;
      }
      for (const auto& key : keys) {
        for (int i = 0; i < count; ++i) {
          auto one_run = worker.start_run(key.slug, key.version, Json{{"i", i}});
          REQUIRE_MESSAGE(one_run, flowreg::testing::failure_text(one_run));
        }
        auto some = worker.start_runs(key.slug, key.version,
                                      std::vector<Json>(static_cast<std::size_t>(count), Json{}));
        REQUIRE_MESSAGE(some, flowreg::testing::failure_text(some));
        calls += count + 1;
      }
      return calls;
    };
  }

  // The runs of the three flows still started.
  std::string left() const {
    return query_one_or_empty(conninfo,
                              "SELECT count(*) FROM flowreg.runs WHERE status = 'started' AND "
                              "flow_slug IN ('fan', 'line', 'one')");
  }
};

// A plan auto_explain wrote to the server's log (auto_explain.log_format = json): the statement
// (for a statement of a function, its text in the function) and its plan.
struct LoggedPlan {
  std::string query;
  Json plan;
  bool jit = false;  // compiled with JIT
};

// The plans auto_explain wrote to `log` from byte `from` on. A message is written as its first
// line (after log_line_prefix) and then its other lines, each after a tab (PostgreSQL's stderr
// log).
std::vector<LoggedPlan> logged_plans(const fs::path& log, std::uintmax_t from) {
  std::ifstream in(log);
  REQUIRE_MESSAGE(in, "cannot read " << log);
  in.seekg(static_cast<std::streamoff>(from));
  std::vector<LoggedPlan> out;
  std::string line, text;
  bool in_plan = false;
  const auto flush = [&] {
    if (!in_plan) return;
    in_plan = false;
    const Json j = Json::parse(text, nullptr, false);
    REQUIRE_MESSAGE(!j.is_discarded(), "a plan in " << log << " that is not JSON:\n" << text);
    out.push_back(
        {j.value("Query Text", std::string()), j.value("Plan", Json()), j.contains("JIT")});
    text.clear();
  };
  while (std::getline(in, line)) {
    if (in_plan && !line.empty() && line[0] == '\t') {
      text += line + "\n";
      continue;
    }
    flush();
    in_plan = line.find(" LOG:  duration: ") != std::string::npos && line.size() >= 7 &&
              line.compare(line.size() - 7, 7, "  plan:") == 0;
  }
  flush();
  return out;
}

// The scans of a table of `tables` in `plan` (its nodes, subplans and init plans included) that
// read it other than through an index condition: a sequential scan, or an index scan without one
// (a whole index), unless it is a walk in index order that a Limit stops (no filter: it reads as
// many rows as it returns). "<node> on <table>[ using <index>]" each.
void unkeyed_scans(const Json& plan, const std::set<std::string>& tables,
                   std::vector<std::string>& out, const std::string& parent = "") {
  if (!plan.is_object()) return;
  const std::string node = plan.value("Node Type", std::string());
  const std::string table = plan.value("Relation Name", std::string());
  const bool index_scan = node == "Index Scan" || node == "Index Only Scan";
  const bool limited_walk = parent == "Limit" && !plan.contains("Filter");
  if (tables.count(table) &&
      (node == "Seq Scan" || (index_scan && !plan.contains("Index Cond") && !limited_walk)))
    out.push_back(node + " on " + table +
                  (plan.contains("Index Name") ? " using " + plan.value("Index Name", std::string())
                                               : std::string()));
  if (plan.contains("Plans"))
    for (const auto& child : plan["Plans"]) unkeyed_scans(child, tables, out, node);
}

// The newest version of `slug` a worker stored.
std::string version_of(const std::string& conninfo, const std::string& slug) {
  const std::string version =
      query_one_or_empty(conninfo, "SELECT version FROM flowreg.flows WHERE slug = '" + slug +
                                       "' ORDER BY created_at DESC LIMIT 1");
  REQUIRE_MESSAGE(!version.empty(), "no stored version of " << slug);
  return version;
}

}  // namespace

TEST_SUITE("hot_path") {
  // A generic plan estimates `LIMIT $n` as a tenth of the table: near a million tasks the claim's
  // estimated cost passes jit_above_cost, and each call then JIT-compiled its plan (about 11 ms
  // a call; a 1,000,000-run backlog drained at a third of its rate after ANALYZE). Every
  // function that reads flowreg's tables runs with JIT off, whatever the server's settings.
  TEST_CASE("plans: every function that reads flowreg's tables runs with JIT off") {
    const std::string conninfo = hot_database("hp_jit");
    pqxx::connection conn(conninfo);
    pqxx::nontransaction tx(conn);
    const auto rows = tx.exec(
        "SELECT p.oid::regprocedure::text, coalesce('jit=off' = ANY (p.proconfig), false) "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'flowreg' AND p.provolatile <> 'i' "
        // Names of flowreg's tables and functions, not of its settings ('flowreg.claimed'): the
        // source without its string literals.
        "AND regexp_replace(p.prosrc, '''[^'']*''', '', 'g') LIKE '%flowreg.%' "
        "ORDER BY 1");
    CHECK(rows.size() >= 20);
    for (const auto& row : rows) {
      CAPTURE(row[0].as<std::string>());
      CHECK(row[1].as<bool>());
    }
  }

  // _lease_end is the one lease formula of the claim, the renewals and the tasks created claimed:
  // a call per task on the hot path unless the planner inlines it, which a SET clause (jit = off
  // included) or another language would prevent.
  TEST_CASE("plans: the lease formula is inlined into the statements that use it") {
    const std::string conninfo = hot_database("hp_lease_inline");
    pqxx::connection conn(conninfo);
    pqxx::nontransaction tx(conn);
    const auto plan_of = [&] {
      std::string plan;
      for (const auto& row : tx.exec("EXPLAIN (VERBOSE, COSTS OFF) SELECT flowreg._lease_end("
                                     "t.timeout_ms, 5000) FROM flowreg.tasks t"))
        plan += row[0].as<std::string>() + "\n";
      return plan;
    };
    const std::string plan = plan_of();
    CAPTURE(plan);
    CHECK(plan.find("_lease_end") == std::string::npos);
    CHECK(plan.find("LEAST(") != std::string::npos);
    // The check sees the difference: with a SET clause, the call stays.
    tx.exec("ALTER FUNCTION flowreg._lease_end(bigint, bigint) SET jit = off");
    CHECK(plan_of().find("flowreg._lease_end(") != std::string::npos);
  }

  TEST_CASE(
      "plans: after ANALYZE of a 100,000-run backlog, claims, completions, steps views and "
      "cancels scan no large table and read a bounded number of tuples per task or run") {
    // Both layouts of a run (migration 0012): a one-step flow's, whose step's state is in its
    // run's row, and a chain's, with step states (its first steps' completions are measured).
    std::string name;
    std::vector<flowreg::StepDef> steps;
    SUBCASE("one-step flow") {
      name = "hp_claim_plans";
      steps = {step("only")};
    }
    SUBCASE("two-step chain") {
      name = "hp_claim_plans_chain";
      steps = {step("a"), step("b", {"a"})};
    }
    const std::string conninfo = hot_database(name);
    fd::FlowKey key;
    {
      auto setup = connect(conninfo);
      key = store_flow(setup, "backlog", steps);
      const int backlog = backlog_runs();
      if (backlog != 100'000) std::fprintf(stderr, "backlog: %d runs\n", backlog);
      start_many(setup, key, backlog);
    }
    analyze_all(conninfo);

    std::optional<fd::RunStore> held(connect(conninfo));
    fd::RunStore& worker = *held;
    std::vector<fd::Completion> pending;
    long tasks = 0;
    // One worker cycle: record the previous claim's results, claim the next batch.
    const auto cycle = [&] {
      auto r = worker.work("w1", pending, {}, std::span(&key, 1), 64, std::nullopt);
      REQUIRE_MESSAGE(r, flowreg::testing::failure_text(r));
      REQUIRE(r->rejected.empty());
      pending.clear();
      for (const auto& t : r->claimed) pending.push_back(completion(t, Json{{"ok", 1}}));
      return static_cast<long>(r->claimed.size());
    };
    // The worker's plans are made here, as in production, and 10,000 tasks are done first: a plan
    // that walks the tasks from the oldest reads every finished one on each call.
    const long drained = [&] {
      long done = 0;
      while (done < 10'000) {
        auto r = worker.work("w1", pending, {}, std::span(&key, 1), 500, std::nullopt);
        REQUIRE_MESSAGE(r, flowreg::testing::failure_text(r));
        REQUIRE(r->rejected.empty());
        pending.clear();
        for (const auto& t : r->claimed) pending.push_back(completion(t, Json{{"ok", 0}}));
        done += static_cast<long>(r->claimed.size());
      }
      return done;
    }();
    CHECK(drained >= 10'000);
    for (int i = 0; i < 3; ++i) cycle();
    const auto before = settled_scans(conninfo, {&worker});
    for (int i = 0; i < 20; ++i) tasks += cycle();
    {
      auto done = worker.complete(pending);  // the last claim's results
      REQUIRE_MESSAGE(done, flowreg::testing::failure_text(done));
      pending.clear();
      // claim() and complete() on their own, as a worker without work() would call them.
      for (int i = 0; i < 5; ++i) {
        auto claimed = worker.claim("w1", std::span(&key, 1), 64);
        REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
        for (const auto& t : *claimed) pending.push_back(completion(t, Json{{"ok", 2}}));
        tasks += static_cast<long>(claimed->size());
        auto completed = worker.complete(pending);
        REQUIRE_MESSAGE(completed, flowreg::testing::failure_text(completed));
        pending.clear();
      }
    }
    REQUIRE(tasks == 25 * 64);
    held.reset();  // the measured backend exits and flushes its counters
    wait_alone(conninfo);
    const auto cost = read_cost(before, read_scans(conninfo));
    INFO("tasks claimed and completed: " << tasks << "\n" << cost.detail);
    CHECK(cost.big_seq_scans == 0);
    CHECK(cost.big_seq_rows == 0);
    CHECK(static_cast<double>(cost.tuples) / static_cast<double>(tasks) < kTuplesPerTask);
    CHECK(static_cast<double>(cost.index_entries) / static_cast<double>(tasks) <
          kIndexEntriesPerTask);

    // Reading a run's steps and cancelling it find its tasks by key too, in the same backlog: a
    // one-step flow's solo task through its run's task_id (migration 0013), a chain's tasks
    // through tasks_by_run. 10 runs whose first task is claimed, 10 whose first is queued.
    std::optional<fd::RunStore> viewer(connect(conninfo));
    auto claimed = viewer->claim("w2", std::span(&key, 1), 10);
    REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
    REQUIRE(claimed->size() == 10);
    std::vector<fd::RunId> runs;
    for (const auto& t : *claimed) runs.push_back(t.run_id);
    {
      std::stringstream queued(query_one_or_empty(
          conninfo,
          "SELECT string_agg(run_id::text, ' ') FROM (SELECT run_id FROM flowreg.tasks WHERE "
          "status = 'queued' ORDER BY available_at, id LIMIT 10) x"));
      for (std::string id; queued >> id;) runs.push_back(id);
    }
    REQUIRE(runs.size() == 20);
    const auto before_views = settled_scans(conninfo, {&*viewer});
    std::string shown;
    for (const auto& run : runs) {
      auto run_steps = viewer->run_steps(run);
      REQUIRE_MESSAGE(run_steps, flowreg::testing::failure_text(run_steps));
      REQUIRE_FALSE(run_steps->empty());
      shown += std::to_string(run_steps->front().attempts);
      auto cancelled = viewer->cancel_run(run);
      REQUIRE_MESSAGE(cancelled, flowreg::testing::failure_text(cancelled));
      CHECK(*cancelled);
    }
    viewer.reset();
    wait_alone(conninfo);
    const auto view_cost = read_cost(before_views, read_scans(conninfo));
    INFO("runs shown and cancelled: " << runs.size() << "\n" << view_cost.detail);
    CHECK(shown == "11111111110000000000");  // the claimed task's attempt shows
    CHECK(view_cost.big_seq_scans == 0);
    CHECK(view_cost.big_seq_rows == 0);
    CHECK(static_cast<double>(view_cost.tuples) / static_cast<double>(runs.size()) <
          kTuplesPerTask);
    CHECK(static_cast<double>(view_cost.index_entries) / static_cast<double>(runs.size()) <
          kIndexEntriesPerTask);
    std::string in;
    for (const auto& run : runs) in += (in.empty() ? "'" : ", '") + run + "'";
    CHECK(query_one_or_empty(
              conninfo, "SELECT count(*) FROM flowreg.tasks WHERE run_id IN (" + in + ")") == "0");

    // Listing the runs of every flow, newest first, in pages (as the API and the dashboard do),
    // walks runs_by_flow flow by flow (migration 0015): the rows listed, not the backlog.
    std::optional<fd::RunStore> lister(connect(conninfo));
    const auto before_lists = settled_scans(conninfo, {&*lister});
    long listed = 0;
    std::optional<fd::RunId> after_run;
    for (int page = 0; page < 10; ++page) {
      auto some = lister->list_runs(fd::RunFilter{std::nullopt, std::nullopt, 50}, after_run);
      REQUIRE_MESSAGE(some, flowreg::testing::failure_text(some));
      REQUIRE(some->size() == 50);
      listed += 50;
      after_run = some->back().id;
      auto started = lister->list_runs(fd::RunFilter{std::nullopt, fd::RunStatus::started, 50});
      REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
      REQUIRE(started->size() == 50);
      listed += 50;
    }
    lister.reset();
    wait_alone(conninfo);
    const auto list_cost = read_cost(before_lists, read_scans(conninfo));
    INFO("runs listed: " << listed << "\n" << list_cost.detail);
    CHECK(list_cost.big_seq_scans == 0);
    CHECK(list_cost.big_seq_rows == 0);
    // The runs of one start_runs() call share a created_at: a page, ordered by (created_at, id),
    // reads the whole group of 500 it falls in, about 20 rows per run listed here. A plan that
    // read the backlog would read 2,000 per run listed (100,000 per call).
    CHECK(static_cast<double>(list_cost.tuples) / static_cast<double>(listed) < 25);
    CHECK(static_cast<double>(list_cost.index_entries) / static_cast<double>(listed) < 25);

    // The API's and the dashboard's lists: summaries within a range of creation times, paged to
    // older runs and back up to newer ones, and their count, walk runs_by_flow the same way: the
    // time range and the cursor are ranges of its key.
    std::optional<fd::RunStore> summarist(connect(conninfo));
    const auto now = std::chrono::system_clock::now();
    fd::RunFilter ranged{std::nullopt, std::nullopt, 50};
    ranged.since = now - std::chrono::hours(1);
    ranged.until = now + std::chrono::hours(1);
    const auto before_summaries = settled_scans(conninfo, {&*summarist});
    long summarised = 0;
    std::optional<fd::RunCursor> cursor;
    for (int page = 0; page < 5; ++page) {
      auto some = summarist->list_run_summaries(ranged, cursor);
      REQUIRE_MESSAGE(some, flowreg::testing::failure_text(some));
      REQUIRE(some->size() == 50);
      summarised += 50;
      cursor = fd::RunCursor{some->back().id, false};
    }
    auto newer = summarist->list_run_summaries(ranged, fd::RunCursor{cursor->id, true});
    REQUIRE_MESSAGE(newer, flowreg::testing::failure_text(newer));
    REQUIRE(newer->size() == 50);
    summarised += 50;
    auto counted = summarist->count_runs(ranged, 1001);
    REQUIRE_MESSAGE(counted, flowreg::testing::failure_text(counted));
    CHECK(*counted == 1001);
    summarised += 1001;
    summarist.reset();  // its backend's counters are flushed as it exits
    wait_alone(conninfo);
    const auto summary_cost = read_cost(before_summaries, read_scans(conninfo));
    INFO("runs summarised and counted: " << summarised << "\n" << summary_cost.detail);
    CHECK(summary_cost.big_seq_scans == 0);
    CHECK(summary_cost.big_seq_rows == 0);
    CHECK(static_cast<double>(summary_cost.tuples) / static_cast<double>(summarised) < 25);
    CHECK(static_cast<double>(summary_cost.index_entries) / static_cast<double>(summarised) < 25);

    // A search of the inputs reads at most kTextSearchScan runs of each flow, by the same index,
    // whatever the backlog.
    const long flows_with_runs =
        std::stol(query_one_or_empty(conninfo, "SELECT count(*) FROM flowreg._run_slugs()"));
    fd::RunFilter searched{std::nullopt, std::nullopt, 50};
    searched.input_text = "a text no input holds";
    summarist.emplace(connect(conninfo));
    const auto before_search = settled_scans(conninfo, {&*summarist});
    auto found = summarist->list_run_summaries(searched);
    REQUIRE_MESSAGE(found, flowreg::testing::failure_text(found));
    CHECK(found->empty());
    summarist.reset();
    wait_alone(conninfo);
    const auto search_cost = read_cost(before_search, read_scans(conninfo));
    INFO("flows with runs: " << flows_with_runs << "\n" << search_cost.detail);
    CHECK(search_cost.big_seq_scans == 0);
    CHECK(search_cost.big_seq_rows == 0);
    CHECK(search_cost.tuples <= (fd::RunFilter::kTextSearchScan + 1000) * flows_with_runs * 3 / 2);
  }

  // A worker plans its statements while the tables are small and analyzed so (a queue drained, a
  // pruned database): its generic plans are kept until the next ANALYZE, which a burst outruns
  // (autovacuum is off here, as between two of its passes). Every statement of the lifecycle of a
  // DAG with a map step, of a chain and of a one-step flow (started one at a time and in a batch,
  // claimed, renewed, given back, completed, failed, crashed, cancelled, retried, its steps read)
  // must still read its rows by key once a backlog is there:
  //   - written as joins, the plans made on small tables walked all of tasks_by_run (the lock of
  //     a completion's runs, the deletion of a map step's tasks), of step_states_pkey (the start
  //     of a ready step) and of runs_pkey (a run's completion by _start_steps), and work() read
  //     tasks whole (its query of the next delayed task): 13,753 tuples read per task (9.0
  //     million of step_states for 817 tasks);
  //   - with sequential scans on, get_run, run_steps, cancel_run and retry_run made 490
  //     sequential scans of the 90,000-row tables in 100 calls.
  // Since: 12.9 tuples read per task or call (13.4 with the calls added since: starts, given back
  // and crashed tasks). Not measured here: prune, which walks a flow's runs by creation and reads
  // the runs not ended among them (a 90,000-run backlog of started runs: 92,664 rows read), once
  // per cutoff (the next test).
  TEST_CASE("plans: made on small tables, they read a 90,000-run backlog by key") {
    const std::string conninfo = hot_database("hp_small_plans");
    const auto fan = CallMix::fan(), line = CallMix::line(), one = CallMix::one();
    std::optional<fd::RunStore> held(connect(conninfo));
    fd::RunStore& worker = *held;
    CallMix mix{conninfo,
                worker,
                {store_flow(worker, "fan", fan), store_flow(worker, "line", line),
                 store_flow(worker, "one", one)}};
    const auto& keys = mix.keys;
    // The plans, made on small tables: a few runs of each flow, run to their end, analyzed (as
    // autovacuum does once a queue is drained), and a few more runs, whose calls make the plans
    // again with those statistics.
    for (int i = 0; i < 8; ++i) {
      if (i == 4) analyze_all(conninfo);
      for (const auto& key : keys) start_many(worker, key, 3);
      mix.use_runs(1)();
      CHECK(mix.drain() > 0);
      CHECK(mix.left() == "0");
    }
    // The backlog: runs of flows of the same shapes that this worker does not serve, and then
    // the runs it is measured on, started by another connection.
    {
      auto other = connect(conninfo);
      start_many(other, store_flow(other, "fan_backlog", fan), 30'000);
      start_many(other, store_flow(other, "line_backlog", line), 30'000);
      start_many(other, store_flow(other, "one_backlog", one), 30'000);
      for (const auto& key : keys) start_many(other, key, 100);
    }
    const auto uses_picked = mix.use_runs(10);
    const auto before = settled_scans(conninfo, {&worker});
    const int uses = uses_picked();
    const long tasks = mix.drain();
    held.reset();  // the measured backend exits and flushes its counters
    wait_alone(conninfo);
    const auto cost = read_cost(before, read_scans(conninfo));
    INFO("tasks claimed: " << tasks << ", calls on runs: " << uses << "\n" << cost.detail);
    CHECK(mix.left() == "0");
    // Every end ran, for each shape: completed, failed, cancelled.
    CHECK(query_one_or_empty(conninfo,
                             "SELECT string_agg(flow_slug || ' ' || status, ', ' ORDER BY "
                             "flow_slug, status) FROM (SELECT DISTINCT flow_slug, status FROM "
                             "flowreg.runs WHERE flow_slug IN ('fan', 'line', 'one')) x") ==
          "fan cancelled, fan completed, fan failed, line cancelled, line completed, line failed, "
          "one cancelled, one completed, one failed");
    CHECK(tasks > 100 * (1 + 1 + 1));
    CHECK(cost.big_seq_scans == 0);
    CHECK(cost.big_seq_rows == 0);
    CHECK(uses >= 10 * 3 * 3 + 3 * 11);
    CHECK(!mix.given_back.empty());
    CHECK(!mix.crashed.empty());
    const auto per_call = static_cast<double>(tasks + uses);
    CHECK(static_cast<double>(cost.tuples) / per_call < kTuplesPerTask);
    CHECK(static_cast<double>(cost.index_entries) / per_call < kIndexEntriesPerTask);
  }

  // Every statement flowreg runs reads a table of its schema through an index condition: by its
  // key, by a parameterized probe driven by the rows given (`key = ANY (ARRAY[row.key])`, or a
  // lateral subquery), or by a range of an index it was written for. Read from the plans themselves
  // (auto_explain, every statement of every function), each made by a new session in one of five
  // states of the statistics: tables never analyzed; analyzed while nearly empty (a drained queue);
  // analyzed empty (every run pruned, their pages left); analyzed with a backlog mostly queued
  // (this one and the second gave the cliffs of issue 13 and stop 41); analyzed again once that
  // backlog is drained (its pages left empty). The tests above measure reads at one size; this one
  // fails on the shape of a plan (a sequential scan, or a whole index read, as the outer side of a
  // join or alone), whatever the sizes: such a plan, kept by a session while its tables grow, reads
  // them whole on every call. When it was written, it found renew_leases and release_tasks reading
  // tasks_leased whole (every started task, on every renewal) and _fail_runs reading all of
  // step_states_pkey.
  TEST_CASE(
      "plans: in any state of the statistics, every statement reads flowreg's tables by "
      "an index condition") {
    const std::string conninfo = hot_database("hp_plan_shapes");
    const fs::path log_file = flowreg::pgtest::shared_cluster().status()->log_file;
    // Plans of every statement of this database's sessions, but for the test's own (`quiet`).
    {
      pqxx::connection conn(conninfo);
      pqxx::nontransaction tx(conn);
      const std::string db = tx.quote_name(conn.dbname());
      tx.exec("ALTER DATABASE " + db + " SET session_preload_libraries = 'auto_explain'");
      tx.exec("ALTER DATABASE " + db + " SET auto_explain.log_min_duration = 0");
      tx.exec("ALTER DATABASE " + db + " SET auto_explain.log_nested_statements = on");
      tx.exec("ALTER DATABASE " + db + " SET auto_explain.log_format = 'json'");
      // Any statement not run with JIT off is compiled (and its plan says so).
      tx.exec("ALTER DATABASE " + db + " SET jit_above_cost = 0");
    }
    const std::string quiet = conninfo + " options='-c auto_explain.log_min_duration=-1'";
    std::set<std::string> tables;
    {
      pqxx::connection conn(quiet);
      for (const auto& row : pqxx::nontransaction(conn).exec(
               "SELECT tablename FROM pg_tables WHERE schemaname = 'flowreg'"))
        tables.insert(row[0].as<std::string>());
    }
    REQUIRE(tables.count("tasks") == 1);
    REQUIRE(tables.count("runs") == 1);
    const auto log_size = [&] { return fs::exists(log_file) ? fs::file_size(log_file) : 0; };
    // Whole reads by design: the metrics scrape's counts of the tasks queued (with the oldest ready
    // among them) and running, which are what they count; the list of workers, which lists them
    // all with the tasks each holds (counted over the started tasks, as many as the slots), and a
    // worker's first heartbeat, which forgets the workers long silent among them; and the record
    // of a round of retention, in flowreg.retention's one row (migration 0029).
    const std::string workers_list = "FROM flowreg.workers w\n LEFT JOIN (SELECT t.worker_id";
    const std::vector<std::pair<std::string, std::string>> by_design{
        {"Seq Scan on workers", workers_list},
        {"Index Scan on workers using workers_pkey", workers_list},
        {"Index Scan on tasks using tasks_leased", workers_list},
        {"Seq Scan on workers", "DELETE FROM flowreg.workers o"},
        {"Seq Scan on retention", "UPDATE flowreg.retention SET rounds = rounds + 1"},
        {"Index Scan on tasks using tasks_queued",
         "FROM flowreg.tasks WHERE status = 'queued' AND gate IS NULL GROUP BY flow_slug"},
        {"Index Scan on tasks using tasks_gated",
         "FROM flowreg.tasks WHERE status = 'queued' AND gate IS NOT NULL GROUP BY flow_slug"},
        {"Index Only Scan on tasks using tasks_gated",
         "FROM flowreg.tasks WHERE status = 'queued' AND gate IS NOT NULL GROUP BY flow_slug"},
        {"Index Scan on tasks using tasks_leased",
         "SELECT flow_slug, 0, count(*), NULL FROM flowreg.tasks WHERE status = 'started'"}};
    const auto violations = [&](const std::vector<LoggedPlan>& plans) {
      std::string found;
      for (const auto& p : plans) {
        std::vector<std::string> scans;
        unkeyed_scans(p.plan, tables, scans);
        for (const auto& scan : scans)
          if (std::none_of(by_design.begin(), by_design.end(), [&](const auto& d) {
                return scan == d.first && p.query.find(d.second) != std::string::npos;
              }))
            found += scan + " in:\n" + p.query + "\n\n";
        if (p.jit) found += "JIT in:\n" + p.query + "\n\n";
      }
      return found;
    };

    // The check sees a whole index read, a sequential scan and a plan compiled with JIT, and lets
    // a key lookup and a walk that stops at a LIMIT pass.
    {
      const auto from = log_size();
      pqxx::connection conn(conninfo);
      pqxx::nontransaction tx(conn);
      tx.exec("SET jit = off");
      tx.exec("SET enable_seqscan = off");
      tx.exec("SELECT id FROM flowreg.runs ORDER BY id");
      tx.exec("SELECT id FROM flowreg.runs ORDER BY id LIMIT 1");
      tx.exec("SET enable_seqscan = on");
      tx.exec("SELECT count(*) FROM flowreg.tasks");
      tx.exec("SELECT id FROM flowreg.runs WHERE id = '00000000-0000-0000-0000-000000000000'");
      tx.exec("SET jit = on");
      tx.exec("SELECT id FROM flowreg.runs WHERE id = '00000000-0000-0000-0000-000000000001'");
      const auto plans = logged_plans(log_file, from);
      REQUIRE(plans.size() == 5);
      const std::string found = violations(plans);
      CAPTURE(found);
      CHECK(found.find("Index Only Scan on runs using runs_pkey in:\nSELECT id FROM flowreg.runs "
                       "ORDER BY id\n") != std::string::npos);
      CHECK(found.find("Seq Scan on tasks in:\nSELECT count(*)") != std::string::npos);
      CHECK(found.find("00000000-0000-0000-0000-000000000000") == std::string::npos);
      CHECK(found.find("LIMIT 1") == std::string::npos);
      CHECK(found.find("JIT in:\nSELECT id FROM flowreg.runs WHERE id = "
                       "'00000000-0000-0000-0000-000000000001'") != std::string::npos);
    }

    const auto from = log_size();
    std::optional<fd::RunStore> setup(connect(conninfo));
    const std::vector<fd::FlowKey> keys{store_flow(*setup, "fan", CallMix::fan()),
                                        store_flow(*setup, "line", CallMix::line()),
                                        store_flow(*setup, "one", CallMix::one())};
    // Runs started with priorities (migration 0022): this flow's claims take the walk per level,
    // the others' the walk of level 0.
    const fd::FlowKey ranked = store_flow(*setup, "ranked", CallMix::one());
    // Concurrency limits per key (migration 0023): a chain a -> b whose flow allows 2 runs at once
    // per /g, and whose step b 1 task at once per /g; its claims take _claim_gated's statements.
    const fd::FlowKey gated = [&] {
      flowreg::FlowDef f;
      f.slug = "gated";
      f.module = "test";
      f.steps = {step("a"), step("b", {"a"})};
      flowreg::Concurrency runs_at_once, tasks_at_once;
      runs_at_once.limit = 2;
      runs_at_once.key = "/g";
      tasks_at_once.limit = 1;
      tasks_at_once.key = "/g";
      f.concurrency = runs_at_once;
      f.steps[1].concurrency = tasks_at_once;
      const std::string version = flowreg::flow_version(f);
      auto stored = setup->upsert_flow(f, version);
      REQUIRE_MESSAGE(stored, flowreg::testing::failure_text(stored));
      return fd::FlowKey{f.slug, version};
    }();
    // Rate limits (migration 0024): a chain a -> b whose flow allows 1,000,000 task starts a second
    // per /g (buckets of the flow, per key), its step b 1 task at once per /g; and a step allowed
    // 1,000,000 starts a second (one bucket).
    const auto store_rated = [&](const std::string& slug, bool chain) {
      flowreg::FlowDef f;
      f.slug = slug;
      f.module = "test";
      flowreg::RateLimit r;
      r.limit = 1'000'000;
      r.per = 1000ms;
      if (chain) {
        f.steps = {step("a"), step("b", {"a"})};
        r.key = "/g";
        f.rate_limit = r;
        f.steps[1].concurrency = flowreg::Concurrency{1, std::string("/g")};
      } else {
        f.steps = {step("a")};
        f.steps[0].rate_limit = r;
      }
      const std::string version = flowreg::flow_version(f);
      auto stored = setup->upsert_flow(f, version);
      REQUIRE_MESSAGE(stored, flowreg::testing::failure_text(stored));
      return fd::FlowKey{f.slug, version};
    };
    const fd::FlowKey rated = store_rated("rated", true);
    const fd::FlowKey rated_one = store_rated("rated_one", false);
    long tasks = 0;
    int uses = 0;
    // A worker's session whose plans are made in the state the tables are in: it starts runs,
    // uses some (retries, cancels, reads), drains them all, then lists, prunes and scrapes.
    const auto session = [&](int runs, int used) {
      std::optional<fd::RunStore> held(connect(conninfo));
      CallMix mix{quiet, *held, keys};
      for (const auto& key : keys) start_many(*held, key, runs);
      uses += mix.use_runs(used)();
      tasks += mix.drain();
      CHECK(mix.left() == "0");
      for (const auto& key : keys) {
        auto listed = held->list_runs(fd::RunFilter{key.slug, std::nullopt, 10});
        REQUIRE_MESSAGE(listed, flowreg::testing::failure_text(listed));
        CHECK(!listed->empty());
        auto ended = held->list_runs(fd::RunFilter{key.slug, fd::RunStatus::failed, 10});
        REQUIRE_MESSAGE(ended, flowreg::testing::failure_text(ended));
      }
      auto all = held->list_runs();
      REQUIRE_MESSAGE(all, flowreg::testing::failure_text(all));
      scrape(*held, scrape(*held, std::nullopt).next);
      auto pruned = held->prune(1h, 50);  // ended an hour ago: none, but each flow's runs walked
      REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
      // A round of retention (nothing ended a day ago: each flow's runs walked, none deleted).
      flowreg::RetentionSettings day;
      day.runs = {flowreg::Millis(86'400'000), flowreg::Millis(86'400'000),
                  flowreg::Millis(86'400'000)};
      auto retained = held->retain(day, "w2", 50);
      REQUIRE_MESSAGE(retained, flowreg::testing::failure_text(retained));
      CHECK(retained->runs == 0);
      // The calls apart from work(): a worker's heartbeat and the list of workers, starts with an
      // idempotency key (the same input twice, then another), and claims, renewals that skip
      // locked rows, completions and failures each in a call of its own.
      fd::WorkerRecord me;
      me.id = "w2";
      me.host = "here";
      me.pid = 2;
      me.concurrency = 1;
      me.flows = keys;
      me.started_at = me.last_heartbeat_at = std::chrono::system_clock::now();
      auto beat = held->heartbeat(me, false);
      REQUIRE_MESSAGE(beat, flowreg::testing::failure_text(beat));
      auto workers = held->list_workers();
      REQUIRE_MESSAGE(workers, flowreg::testing::failure_text(workers));
      for (const auto& key : keys) {
        const fd::StartOptions keyed{"k" + std::to_string(runs), std::nullopt, std::nullopt,
                                     std::nullopt};
        auto first = held->start_run(key.slug, key.version, Json{{"k", 1}}, keyed);
        REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
        auto again = held->start_run(key.slug, key.version, Json{{"k", 1}}, keyed);
        REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
        CHECK(*again == *first);
        CHECK(!held->start_run(key.slug, key.version, Json{{"k", 2}}, keyed));
      }
      // Leases that lapse: w3 takes two tasks for 1 ms and goes silent; the next claim runs
      // _claim's statements for expired leases (the exhausted fail, here none; the others are
      // queued again), which run only then.
      for (const auto& key : keys) start_many(*held, key, 1);
      auto lapsed = held->work("w3", {}, {}, std::span(keys), 2, 1ms);
      REQUIRE_MESSAGE(lapsed, flowreg::testing::failure_text(lapsed));
      CHECK(lapsed->claimed.size() == 2);
      std::this_thread::sleep_for(20ms);
      // One task in 4 fails once (retried after its step's backoff, 1 s), one in 8 of the others
      // for good.
      const auto until = std::chrono::steady_clock::now() + 60s;
      while (mix.left() != "0" && std::chrono::steady_clock::now() < until) {
        auto claimed = held->claim("w2", std::span(keys), 16);
        REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
        if (claimed->empty()) {
          std::this_thread::sleep_for(100ms);
          continue;
        }
        std::vector<fd::TaskAttempt> held_tasks;
        std::vector<fd::Completion> done;
        std::vector<fd::Failure> failed;
        for (const auto& t : *claimed) {
          held_tasks.push_back({t.id, t.attempt});
          if (t.id % 4 == 3 && t.attempt == 1)
            failed.push_back(fd::Failure{t.id, t.attempt, "once", false});
          else if (t.id % 8 == 6)
            failed.push_back(fd::Failure{t.id, t.attempt, "no", true});
          else
            done.push_back(completion(t, t.step_slug == "split" ? Json::array({1}) : Json{}));
        }
        auto renewed = held->renew("w2", held_tasks, 5000ms, true);
        REQUIRE_MESSAGE(renewed, flowreg::testing::failure_text(renewed));
        CHECK(renewed->empty());
        auto completed = held->complete(done);
        REQUIRE_MESSAGE(completed, flowreg::testing::failure_text(completed));
        auto failures = held->fail(failed);
        REQUIRE_MESSAGE(failures, flowreg::testing::failure_text(failures));
      }
      for (const int priority : {-2, 0, 3}) {
        const std::vector<Json> inputs(2, Json{{"p", priority}});
        auto started =
            held->start_runs(ranked.slug, ranked.version, inputs, std::nullopt, priority);
        REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
      }
      for (int claimed_ranked = 0; claimed_ranked < 6;) {
        auto claimed = held->claim("w2", std::span(&ranked, 1), 4);
        REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
        REQUIRE(!claimed->empty());
        std::vector<fd::Completion> done;
        for (const auto& t : *claimed) done.push_back(completion(t, Json{}));
        auto completed = held->complete(done);
        REQUIRE_MESSAGE(completed, flowreg::testing::failure_text(completed));
        claimed_ranked += static_cast<int>(claimed->size());
      }
      // Gated runs, 3 keys: started one by one and in a batch, drained by claims and work()
      // calls, a waiting run read; the same of the rate-limited flows.
      for (const fd::FlowKey& g : {gated, rated, rated_one}) {
        std::vector<fd::RunId> gated_runs;
        for (int i = 0; i < 3; ++i) {
          auto started = held->start_run(g.slug, g.version, Json{{"g", i % 3}});
          REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
          gated_runs.push_back(*started);
        }
        {
          const std::vector<Json> inputs(6, Json{{"g", 1}});
          auto started = held->start_runs(g.slug, g.version, inputs);
          REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
          gated_runs.insert(gated_runs.end(), started->begin(), started->end());
        }
        std::vector<fd::Completion> gated_done;
        const std::string gated_left = "SELECT count(*) FROM flowreg.runs WHERE flow_slug = '" +
                                       g.slug + "' AND status = 'started'";
        for (int round = 0; round < 200; ++round) {
          auto worked = held->work("w2", gated_done, {}, std::span(&g, 1), 4, 5000ms);
          REQUIRE_MESSAGE(worked, flowreg::testing::failure_text(worked));
          gated_done.clear();
          for (const auto& t : worked->claimed) gated_done.push_back(completion(t, Json{}));
          auto waiting = held->get_run(gated_runs.back());
          REQUIRE_MESSAGE(waiting, flowreg::testing::failure_text(waiting));
          if (gated_done.empty() && query_one_or_empty(quiet, gated_left) == "0") break;
        }
        CHECK(gated_done.empty());
        CHECK(query_one_or_empty(quiet, gated_left) == "0");
        for (const auto& run : gated_runs) {
          auto info = held->get_run(run);
          REQUIRE_MESSAGE(info, flowreg::testing::failure_text(info));
          CHECK((*info)->status == fd::RunStatus::completed);
        }
      }
      CHECK(mix.left() == "0");
      me.stopped_at = std::chrono::system_clock::now();
      beat = held->heartbeat(me, true);
      REQUIRE_MESSAGE(beat, flowreg::testing::failure_text(beat));
    };
    session(3, 1);  // tables never analyzed
    analyze_all(quiet);
    session(3, 1);  // analyzed nearly empty (the runs of the first session ended)
    // Analyzed empty: every run pruned (renew_leases' rejected ids were found by a merge anti
    // join walking all of tasks_pkey, planned so).
    {
      auto pruned = setup->prune(0ms, 100);
      REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
      CHECK(*pruned > 0);
    }
    analyze_all(quiet);
    session(3, 1);  // analyzed empty
    {
      // A backlog mostly queued, started by another session, then analyzed.
      auto other = connect(conninfo);
      for (const auto& key : keys) start_many(other, key, 400);
    }
    analyze_all(quiet);
    session(2, 2);
    analyze_all(quiet);  // drained after a burst: no task left in the pages the burst filled
    session(2, 2);
    {
      // Pruning what ended, in small batches.
      auto pruned = setup->prune(0ms, 100);
      REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
      CHECK(*pruned > 1200);
    }
    setup.reset();

    const auto plans = logged_plans(log_file, from);
    std::set<std::string> statements;
    for (const auto& p : plans) statements.insert(p.query);
    INFO(plans.size() << " plans of " << statements.size()
                      << " statements; tasks claimed: " << tasks << ", calls on runs: " << uses);
    // Statements of the lifecycle's functions among them (a sample, which shows the log holds
    // the statements inside functions), and _claim's two for lapsed leases (with their forms
    // before b9b2bcb, `id IN (...)`, they were planned as whole reads of runs_pkey and
    // tasks_pkey).
    for (const char* text :
         {"DELETE FROM flowreg.tasks t USING b", "INSERT INTO flowreg.step_states",
          "UPDATE flowreg.runs r", "FROM flowreg.flow_steps", "INSERT INTO flowreg.runs",
          "WITH ex AS (", "SET status = 'queued', available_at = now(), lease_expires_at = NULL"}) {
      CAPTURE(text);
      CHECK(std::any_of(statements.begin(), statements.end(),
                        [&](const std::string& q) { return q.find(text) != std::string::npos; }));
    }
    CHECK(statements.size() >= 40);
    CHECK(tasks > 3 * 400);
    const std::string found = violations(plans);
    CHECK_MESSAGE(found.empty(), "scans that are not keyed:\n" << found);
  }

  // prune deletes a cutoff's runs in batches, walking each flow's runs newest first through
  // runs_by_flow (finished_at has no index: completing a run stays a HOT update) and skipping
  // those not ended. Here 6,010 ended runs, then 30,000 newer ones not ended, pruned in batches of
  // 200 with statistics of nearly empty tables:
  //   - each batch started from the top, reading again every run not ended that the batches
  //     before it had skipped: 267,082 rows fetched, 861,058 index entries read;
  //   - each batch starting where the previous one ended, but with bitmap scans on: a bitmap scan
  //     of runs_by_flow reads the whole rest of a flow's range before its first row, on every
  //     batch (84,382 and 110,908);
  //   - now (each batch from where the previous one ended, through an index scan that stops after
  //     its batch): 42,082 and 60,652, each run of the cutoff read about once.
  TEST_CASE("plans: prune's batches read each run of their cutoff once, not once per batch") {
    const std::string conninfo = hot_database("hp_prune_batches");
    std::optional<fd::RunStore> held(connect(conninfo));
    fd::RunStore& store = *held;
    const fd::FlowKey keys[] = {store_flow(store, "pa", {step("only")}),
                                store_flow(store, "pb", {step("only")})};
    // Statistics of the tables nearly empty (analyzed before the runs are there, as autovacuum
    // leaves them between two passes), kept while they fill.
    start_many(store, keys[0], 10);
    analyze_all(conninfo);
    // The older runs ended (3,000 of each flow, completed), then newer ones not ended (15,000 of
    // each, started): the walk from the cutoff down meets the runs not ended first.
    for (const auto& key : keys) {
      start_many(store, key, 3'000);
      drain(store, key);
    }
    REQUIRE(query_one_or_empty(conninfo,
                               "SELECT count(*) FROM flowreg.runs WHERE status = "
                               "'completed'") == "6010");
    for (const auto& key : keys) start_many(store, key, 15'000);
    const auto before = settled_scans(conninfo, {&store});
    auto pruned = store.prune(0ms, 200);
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    held.reset();  // the measured backend exits and flushes its counters
    wait_alone(conninfo);
    const auto cost = read_cost(before, read_scans(conninfo));
    INFO("runs pruned: " << *pruned << "\n" << cost.detail);
    CHECK(*pruned == 6'010);
    CHECK(query_one_or_empty(conninfo,
                             "SELECT count(*) FROM flowreg.runs WHERE status = "
                             "'started'") == "30000");
    CHECK(query_one_or_empty(conninfo, "SELECT count(*) FROM flowreg.runs") == "30000");
    CHECK(cost.big_seq_scans == 0);
    // The 36,010 runs created before the cutoff, each read about once (and the rows deleted,
    // through their keys): under 2 reads each.
    CHECK(cost.tuples < 2 * 36'000);
    CHECK(cost.index_entries < 2 * 36'000);
  }

  // Metrics count the runs that ended in a scrape's window by finished_at, which has no index
  // (completing a run stays a HOT update): per flow, among its runs created since its oldest run
  // that was not ended at the previous scrape, not among the whole history, and not since another
  // flow's oldest run.
  TEST_CASE(
      "metrics: a scrape counts each run that ended in its window once, reading per flow the runs "
      "started since its oldest one not ended at the previous scrape, not the history") {
    const std::string conninfo = hot_database("hp_scrape");
    std::optional<fd::RunStore> held(connect(conninfo));
    fd::RunStore& store = *held;
    const fd::FlowKey history = store_flow(store, "history", {step("only")});
    const fd::FlowKey slow = store_flow(store, "slow", {step("only")});  // never claimed
    const auto lag = past_scrape_lag;

    // c and d: started before a history of 20,000 runs of another flow and still running after
    // it; a: started after it. d runs until the end.
    const fd::RunId c = start_one(store, slow);
    const fd::RunId d = start_one(store, slow);
    start_many(store, history, 20'000);
    drain(store, history);
    const fd::RunId a = start_one(store, slow);
    lag();
    const auto s1 = scrape(store, std::nullopt);
    CHECK(s1.runs.empty());
    CHECK(s1.next.live_from_us == Bounds{{"slow", micros(run_info(store, c).created_at)}});
    CHECK(stragglers(s1).empty());

    // a ends in the second window; c ends in the 3 s before the second scrape, so in the third
    // window. The second scrape reads slow's runs from c on, and finds c and d started before its
    // window and not ended: they become stragglers, read by id, and slow has no bound left.
    cancel(store, a);
    lag();
    cancel(store, c);
    const auto s2 = scrape(store, s1.next);
    REQUIRE_MESSAGE(micros(*run_info(store, c).finished_at) > s2.next.since_us,
                    "more than 3 s passed between ending a run and the next statement");
    CHECK(counted(s2) == Counted{{"slow cancelled", 1}});
    CHECK(s2.next.live_from_us.empty());
    CHECK(stragglers(s2) == Stragglers{{"slow", {c, d}}});
    lag();
    const auto s3 = scrape(store, s2.next);
    CHECK(counted(s3) == Counted{{"slow cancelled", 1}});
    // d is slow's only run not ended, a straggler; history has none.
    CHECK(s3.next.live_from_us.empty());
    CHECK(stragglers(s3) == Stragglers{{"slow", {d}}});

    // 1,000 runs started and ended in the fourth window, after ANALYZE: its scrape reads them, not
    // the 20,003 runs before them, though d, started before the other 20,000, still runs.
    start_many(store, history, 1'000);
    drain(store, history);
    lag();
    analyze_all(conninfo);
    held.reset();
    const auto m4 = measured_scrape(conninfo, s3.next);
    const auto& s4 = m4.counts;
    CHECK(counted(s4) == Counted{{"history completed", 1'000}, {"history started", 1'000}});
    // Of runs: one range scan of the window's 1,000 runs (counting those started and ended, and
    // finding the oldest not ended) reads about 1,000 rows, and slow's d by id; three scans of
    // them (stop 33's form) read about 3,000; one bound for every flow (d's: stop 34's form) reads
    // history's 21,000 since d; there are 21,003 runs in all. (The counts of tasks walk the
    // entries of the 21,000 tasks deleted since the last VACUUM, which is off here.)
    check_runs_read(m4, 2'000);
    CHECK(s4.next.live_from_us.empty());
    CHECK(stragglers(s4) == Stragglers{{"slow", {d}}});

    // d ends: the next scrape counts it, and no flow is left with a run not ended.
    fd::RunStore last = connect(conninfo);
    cancel(last, d);
    lag();
    const auto s5 = scrape(last, s4.next);
    CHECK(counted(s5) == Counted{{"slow cancelled", 1}});
    CHECK(s5.next.live_from_us.empty());
    CHECK(stragglers(s5).empty());
  }

  // Within one flow: a run left started is read by id once a scrape has seen it started before its
  // window, so that the scrapes of a busy flow do not read its runs since that run; more such runs
  // than the limit make the scrapes read the flow's runs from the oldest of the others, and every
  // run ending is counted once either way.
  TEST_CASE(
      "metrics: a run left started in a busy flow is read by id, not by reading the flow's runs "
      "since it, and stragglers beyond the limit fall back to a bound") {
    const std::string conninfo = hot_database("hp_scrape_stragglers");
    std::optional<fd::RunStore> held(connect(conninfo));
    const fd::FlowKey busy = store_flow(*held, "busy", {step("only")});
    // The same flow slug, another version, which no worker serves: its runs stay started.
    const fd::FlowKey stuck = store_flow(*held, "busy", {step("other")});
    REQUIRE(stuck.version != busy.version);
    const auto lag = past_scrape_lag;

    // e: started before 20,000 runs of its own flow, and still running after them.
    const fd::RunId e = start_one(*held, stuck);
    const std::int64_t e_from = micros(run_info(*held, e).created_at);
    start_many(*held, busy, 20'000);
    drain(*held, busy);
    lag();
    const auto s1 = scrape(*held, std::nullopt);
    CHECK(s1.next.live_from_us == Bounds{{"busy", e_from}});
    CHECK(stragglers(s1).empty());
    // The second scrape reads the flow's runs from e on, and finds e started before its window
    // and not ended: a straggler from then on. Finding it walks those runs a second time, in start
    // order; after ANALYZE too, both go through runs_by_flow, not a scan of runs.
    lag();
    analyze_all(conninfo);
    held.reset();
    const auto m2 = measured_scrape(conninfo, s1.next);
    const auto& s2 = m2.counts;
    CHECK(counted(s2).empty());
    CHECK(s2.next.live_from_us.empty());
    CHECK(stragglers(s2) == Stragglers{{"busy", {e}}});
    INFO(m2.cost.detail);
    CHECK(m2.cost.big_seq_scans == 0);
    CHECK(m2.after.at("runs").seq_scan == m2.before.at("runs").seq_scan);
    // The 20,001 runs since e, read twice: by the range scan and by the walk.
    CHECK(m2.after.at("runs").idx_tup_read - m2.before.at("runs").idx_tup_read < 45'000);

    // 1,000 runs of the flow started and ended in the third window, after ANALYZE: its scrape
    // reads them and e, not the 20,000 runs since e.
    held.emplace(connect(conninfo));
    start_many(*held, busy, 1'000);
    drain(*held, busy);
    lag();
    analyze_all(conninfo);
    held.reset();
    const auto m3 = measured_scrape(conninfo, s2.next);
    const auto& s3 = m3.counts;
    CHECK(counted(s3) == Counted{{"busy completed", 1'000}, {"busy started", 1'000}});
    CHECK(s3.next.live_from_us.empty());
    CHECK(stragglers(s3) == Stragglers{{"busy", {e}}});
    // One range scan of the window's 1,000 runs and e by its primary key: about 1,001 rows. A
    // bound at e (no stragglers) reads the 21,001 runs since it.
    check_runs_read(m3, 2'000);

    // At most one straggler per flow from here on. f, g and h start one after another (each its
    // own transaction, so their starts differ) in the fourth window, and stay started.
    fd::RunStore last = connect(conninfo);
    const fd::RunId f = start_one(last, stuck);
    const fd::RunId g = start_one(last, stuck);
    const fd::RunId h = start_one(last, stuck);
    const std::int64_t f_from = micros(run_info(last, f).created_at);
    const std::int64_t h_from = micros(run_info(last, h).created_at);
    REQUIRE(f_from < micros(run_info(last, g).created_at));
    REQUIRE(micros(run_info(last, g).created_at) < h_from);
    lag();
    // f, g and h started in this window: the bound is f's; e stays the straggler.
    const auto t1 = scrape(last, s3.next, 1);
    CHECK(counted(t1) == Counted{{"busy started", 3}});
    CHECK(t1.next.live_from_us == Bounds{{"busy", f_from}});
    CHECK(stragglers(t1) == Stragglers{{"busy", {e}}});
    // Now f, g and h started before the window; with e they are four, one over the limit's
    // room: e stays the straggler and the bound stays at f (the flow's runs are read from f on).
    lag();
    const auto t2 = scrape(last, t1.next, 1);
    CHECK(counted(t2).empty());
    CHECK(t2.next.live_from_us == Bounds{{"busy", f_from}});
    CHECK(stragglers(t2) == Stragglers{{"busy", {e}}});
    // e (a straggler, read by id) and g (in the range from f) end: both counted, once. f becomes
    // the straggler, h the bound.
    cancel(last, e);
    cancel(last, g);
    lag();
    const auto t3 = scrape(last, t2.next, 1);
    CHECK(counted(t3) == Counted{{"busy cancelled", 2}});
    CHECK(t3.next.live_from_us == Bounds{{"busy", h_from}});
    CHECK(stragglers(t3) == Stragglers{{"busy", {f}}});
    cancel(last, f);
    cancel(last, h);
    lag();
    const auto t4 = scrape(last, t3.next, 1);
    CHECK(counted(t4) == Counted{{"busy cancelled", 2}});
    CHECK(t4.next.live_from_us.empty());
    CHECK(stragglers(t4).empty());
    const auto t5 = scrape(last, t4.next, 1);
    CHECK(counted(t5).empty());
  }

  TEST_CASE(
      "plans: one long-lived connection starting runs one at a time, its plans made on small "
      "tables, scans no large table at 100,000 runs") {
    // Both paths of start_run: a two-step flow's start goes on to start_runs, a one-step flow's
    // takes the short path (its calls without a key; RunStore sends those with one to start_runs).
    std::string name;
    std::vector<flowreg::StepDef> steps;
    SUBCASE("two-step flow") {
      name = "hp_start_plans";
      steps = {step("a"), step("b", {"a"})};
    }
    SUBCASE("one-step flow") {
      name = "hp_start_plans_one";
      steps = {step("a")};
    }
    const std::string conninfo = hot_database(name);
    std::optional<fd::RunStore> held(connect(conninfo));
    fd::RunStore& app = *held;
    const auto key = store_flow(app, "one_by_one", steps);
    // As an application's connection: its first calls are made while the tables are small, and
    // analyzed so (every other call with an idempotency key, as later).
    for (int i = 0; i < 12; ++i) {
      if (i == 6) analyze_all(conninfo);
      fd::StartOptions options;
      if (i % 2 == 1) options.idempotency_key = "warm-" + std::to_string(i);
      auto run = app.start_run(key.slug, key.version, Json{{"warm", i}}, options);
      REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
    }
    {
      auto filler = connect(conninfo);
      start_many(filler, key, 80'000);
      // And 20,000 with an idempotency key: a keyed start that looked its key up among every
      // keyed run of the flow (the key as a filter, not an index condition) reads them all.
      pqxx::connection conn(conninfo);
      pqxx::nontransaction tx(conn);
      for (int i = 0; i < 20'000; i += 1000)
        tx.exec_params(
            "SELECT count(*) FROM flowreg.start_runs($1, $2, (SELECT array_agg(jsonb_build_object("
            "'fill', n)) FROM generate_series($3::int, $3::int + 999) n), (SELECT "
            "array_agg('fill-' "
            "|| n) FROM generate_series($3::int, $3::int + 999) n))",
            key.slug, key.version, i);
    }
    const auto before = settled_scans(conninfo, {&app});
    constexpr int kCalls = 50;
    for (int i = 0; i < kCalls; ++i) {
      fd::StartOptions options;
      if (i % 2 == 1) options.idempotency_key = "key-" + std::to_string(i);
      auto run = app.start_run(key.slug, key.version, Json{{"i", i}}, options);
      REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
    }
    held.reset();  // the measured backend exits and flushes its counters
    wait_alone(conninfo);
    const auto cost = read_cost(before, read_scans(conninfo));
    INFO("start_run calls: " << kCalls << "\n" << cost.detail);
    CHECK(cost.big_seq_scans == 0);
    CHECK(cost.big_seq_rows == 0);
    CHECK(static_cast<double>(cost.tuples) / kCalls < kTuplesPerTask);
    CHECK(static_cast<double>(cost.index_entries) / kCalls < kIndexEntriesPerTask);
  }

  TEST_CASE(
      "a refused result in the middle of a batch of complete() fails its task alone, "
      "permanently, with the reason") {
    refused_in_a_batch("hp_refused_complete", [](fd::RunStore& store, auto& batch) {
      auto r = store.complete(batch);
      if (!r) FAIL_CHECK("complete() refused the batch: " << r.error().format());
    });
  }

  TEST_CASE(
      "a refused result in the middle of a batch of work() fails its task alone, permanently, "
      "with the reason") {
    refused_in_a_batch("hp_refused_work", [](fd::RunStore& store, auto& batch) {
      const fd::FlowKey none{"refused", "no such version"};
      auto r = store.work("w1", batch, {}, std::span(&none, 1), 1, std::nullopt);
      if (!r) FAIL_CHECK("work() refused the batch: " << r.error().format());
    });
  }

  TEST_CASE(
      "a worker whose handlers return refused output in one batch with valid ones fails those "
      "tasks alone, with the reason, and completes the others") {
    auto s = make_scene("hp_refused_worker", {fs::path(FLOWREG_FIXTURE_DIR) / "wtext.so"});
    {
      // Registers the flows, then stops: the runs below wait for one worker to claim them together.
      auto first = s.worker("first");
      s.wait_serving("first", "wtext_quick");
      first.signal(SIGTERM);
      REQUIRE(first.wait(30s) == 0);
    }
    auto store = connect(s.conninfo);
    const auto start = [&](const std::string& slug) {
      auto run = store.start_run(slug, version_of(s.conninfo, slug), Json::object());
      REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
      return *run;
    };
    std::vector<fd::RunId> quick;
    for (int i = 0; i < 10; ++i) quick.push_back(start("wtext_quick"));
    const auto deep = start("wtext_deep");
    const auto nul = start("wtext_nul");
    for (int i = 0; i < 10; ++i) quick.push_back(start("wtext_quick"));
    auto a = s.worker("a", {"--batch", "64", "--concurrency", "32"});
    const auto ended = [&](const fd::RunId& run) {
      return run_info(store, run).status != fd::RunStatus::started;
    };
    for (const auto& r : quick) {
      REQUIRE_MESSAGE(eventually([&] { return ended(r); }, 60s), s.err("a"));
      CHECK(run_info(store, r).status == fd::RunStatus::completed);
    }
    REQUIRE_MESSAGE(eventually([&] { return ended(deep) && ended(nul); }, 60s), s.err("a"));
    const auto deep_info = run_info(store, deep);
    CHECK(deep_info.status == fd::RunStatus::failed);
    CHECK(deep_info.error.value_or("").find("nested deeper") != std::string::npos);
    // The worker stores U+FFFD for U+0000: the run completes; were it refused, it would fail
    // alone with its reason, never with "lease expired".
    const auto nul_info = run_info(store, nul);
    CHECK(nul_info.error.value_or("").find("lease expired") == std::string::npos);
    CHECK(s.err("a").find("lease expired") == std::string::npos);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE(
      "four workers completing and failing tasks of the same runs at once: no deadlock, no "
      "flow-loop restart, every run ends as expected") {
    // order_retry: charge fails on its first attempt and succeeds when retried, while reserve, in
    // parallel, completes; an unknown SKU fails fetch permanently. order_fail: charge has one
    // attempt, so it fails its run while reserve of the same run completes or is cancelled.
    // order_charge: charge alone, a one-step flow (its task solo: locked before its run, see
    // schemas/functions/README.md), failing once then completing, while some of its runs are
    // cancelled.
    const std::string flows = R"(flows:
  - slug: order_retry
    options: {max_attempts: 3, base_delay: 1ms, max_delay: 5ms, timeout: 30s}
    steps:
      - {slug: fetch, handler: orders.fetch}
      - {slug: charge, handler: orders.charge, depends_on: [fetch], options: {max_attempts: 5}}
      - {slug: reserve, handler: orders.reserve, depends_on: [fetch]}
      - {slug: ship, handler: orders.ship, depends_on: [charge, reserve]}
  - slug: order_fail
    options: {max_attempts: 1, timeout: 30s}
    steps:
      - {slug: fetch, handler: orders.fetch}
      - {slug: charge, handler: orders.charge, depends_on: [fetch]}
      - {slug: reserve, handler: orders.reserve, depends_on: [fetch]}
      - {slug: ship, handler: orders.ship, depends_on: [charge, reserve]}
  - slug: order_charge
    options: {max_attempts: 3, base_delay: 1ms, max_delay: 5ms, timeout: 30s}
    steps:
      - {slug: charge, handler: orders.charge}
)";
    auto s =
        make_scene("hp_four_workers", {fs::path(FLOWREG_EXAMPLE_PLUGIN_DIR) / "orders.so"}, flows);
    const auto log_file = flowreg::pgtest::shared_cluster().status()->log_file;
    const auto log_start = fs::exists(log_file) ? fs::file_size(log_file) : 0;

    std::vector<flowreg::test::Child> workers;
    for (int i = 0; i < 4; ++i)
      workers.push_back(
          s.worker("w" + std::to_string(i), {"--batch", "64", "--concurrency", "16"}));
    for (int i = 0; i < 4; ++i) s.wait_serving("w" + std::to_string(i), "order_fail");

    auto store = connect(s.conninfo);
    constexpr int kRetry = 3000, kFail = 1500, kBogusEvery = 10;
    const auto start = [&](const std::string& slug, int count, bool bogus) {
      const std::string version = version_of(s.conninfo, slug);
      std::vector<Json> inputs;
      for (int i = 0; i < count; ++i) {
        const bool unknown = bogus && i % kBogusEvery == 0;
        inputs.push_back(Json{{"order_id", slug + "-" + std::to_string(i)},
                              {"items", {{{"sku", unknown ? "bogus" : "book"}, {"qty", 1}}}}});
      }
      for (std::size_t i = 0; i < inputs.size(); i += 500) {
        const std::span chunk(inputs.data() + i, std::min<std::size_t>(500, inputs.size() - i));
        auto started = store.start_runs(slug, version, chunk);
        REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
      }
    };
    start("order_retry", kRetry, true);
    start("order_fail", kFail, false);
    // order_charge's runs, every 5th cancelled while the workers run them (those that ended
    // first stay completed).
    constexpr int kCharge = 1500;
    int cancelled = 0;
    {
      const std::string version = version_of(s.conninfo, "order_charge");
      std::vector<Json> inputs;
      for (int i = 0; i < kCharge; ++i)
        inputs.push_back(
            Json{{"fetch", {{"order_id", "charge-" + std::to_string(i)}, {"total_cents", 100}}}});
      std::vector<fd::RunId> runs;
      for (std::size_t i = 0; i < inputs.size(); i += 500) {
        const std::span chunk(inputs.data() + i, std::min<std::size_t>(500, inputs.size() - i));
        auto started = store.start_runs("order_charge", version, chunk);
        REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
        runs.insert(runs.end(), started->begin(), started->end());
      }
      for (std::size_t i = 0; i < runs.size(); i += 5) {
        auto c = store.cancel_run(runs[i]);
        REQUIRE_MESSAGE(c, flowreg::testing::failure_text(c));
        cancelled += *c ? 1 : 0;
      }
    }

    const auto count = [&](const std::string& slug, fd::RunStatus status) {
      auto runs = store.list_runs(fd::RunFilter{slug, status, 100'000});
      REQUIRE_MESSAGE(runs, flowreg::testing::failure_text(runs));
      return static_cast<int>(runs->size());
    };
    const bool drained = eventually(
        [&] {
          auto left = store.list_runs(fd::RunFilter{std::nullopt, fd::RunStatus::started, 1});
          return left && left->empty();
        },
        150s);
    std::string worker_logs;
    for (int i = 0; i < 4; ++i) {
      workers[static_cast<std::size_t>(i)].signal(SIGTERM);
      CHECK(workers[static_cast<std::size_t>(i)].wait(60s) == 0);
      worker_logs += s.err("w" + std::to_string(i));
    }
    REQUIRE_MESSAGE(drained, "runs still started after 150 s");

    const int bogus = (kRetry + kBogusEvery - 1) / kBogusEvery;
    CHECK(count("order_retry", fd::RunStatus::completed) == kRetry - bogus);
    CHECK(count("order_retry", fd::RunStatus::failed) == bogus);
    CHECK(count("order_fail", fd::RunStatus::failed) == kFail);
    INFO("order_charge runs cancelled while started: " << cancelled);
    CHECK(count("order_charge", fd::RunStatus::cancelled) == cancelled);
    CHECK(count("order_charge", fd::RunStatus::completed) == kCharge - cancelled);

    std::ifstream log(log_file);
    log.seekg(static_cast<std::streamoff>(log_start));
    std::string line, deadlocks;
    int deadlock_count = 0;
    while (std::getline(log, line))
      if (line.find("deadlock detected") != std::string::npos) {
        ++deadlock_count;
        if (deadlock_count <= 3) deadlocks += line + "\n";
      }
    INFO("server log " << log_file.string() << ":\n" << deadlocks);
    CHECK(deadlock_count == 0);
    // A flow loop that ended is logged "<supervisor>: <loop> ended: <reason>" and restarted.
    std::string restarts;
    std::stringstream lines(worker_logs);
    while (std::getline(lines, line))
      if (line.find(" restarted") != std::string::npos ||
          line.find(" ended") != std::string::npos || line.find("deadlock") != std::string::npos)
        restarts += line + "\n";
    INFO("worker logs:\n" << restarts);
    CHECK(restarts.empty());
  }
}
