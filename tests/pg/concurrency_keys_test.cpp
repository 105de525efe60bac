// Concurrency limits per key (migration 0023): a step's limit bounds its tasks running at once per
// key, a flow's its runs active at once per key; the key is the text at a JSON pointer into the
// run's input ("" when it has nothing there). Claims through RunStore on the shared cluster: what
// a claim takes, what frees a slot (a completion, a lapsed lease, a run's end), fairness between
// keys, and what get_run says of a waiting run; then real `flowreg worker` processes, some killed
// with SIGKILL, audited by the handler of tests/plugins/wchaos.cpp.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "app/forms.hpp"
#include "pg/claim_env.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdc = flowreg::detail;
using GateJson = nlohmann::json;
using namespace std::chrono_literals;

flowreg::Concurrency gate_limit(int limit, std::optional<std::string> key) {
  flowreg::Concurrency c;
  c.limit = limit;
  c.key = std::move(key);
  return c;
}

// A flow of one step "s", limited to `limit` at once per /customer: its step's tasks, or (`runs`)
// the flow's runs.
flowreg::FlowDef one_step_limited(const char* slug, int limit, bool runs) {
  flowreg::FlowDef flow;
  flow.slug = slug;
  flow.steps = {flowreg::pgtest::step("s")};
  (runs ? flow.concurrency : flow.steps[0].concurrency) = gate_limit(limit, "/customer");
  return flow;
}

// Three gates on /customer: a step's limit of `limit` tasks at once per key ("by_step"), a flow's
// of `limit` runs at once ("by_flow", a chain a -> b), and a step's rate limit of 1,000 an hour
// without a concurrency limit ("by_rate"), with a bucket per `rate_key` (none: one bucket).
std::vector<flowreg::FlowDef> three_gates(int limit, std::optional<std::string> rate_key) {
  using flowreg::pgtest::step;
  flowreg::FlowDef by_flow;
  by_flow.slug = "by_flow";
  by_flow.steps = {step("a"), step("b", {"a"})};
  by_flow.concurrency = gate_limit(limit, "/customer");
  flowreg::FlowDef by_rate;
  by_rate.slug = "by_rate";
  by_rate.steps = {step("s")};
  flowreg::RateLimit rate;
  rate.limit = 1000;
  rate.per = std::chrono::hours(1);
  rate.key = std::move(rate_key);
  by_rate.steps[0].rate_limit = rate;
  return {one_step_limited("by_step", limit, false), by_flow, by_rate};
}

// Claimed tasks per key (the input's "customer", "" when it has none).
std::map<std::string, int> per_customer(const std::vector<fdc::ClaimedTask>& tasks) {
  std::map<std::string, int> out;
  for (const auto& t : tasks) {
    const GateJson& c = t.input.contains("customer") ? t.input["customer"] : GateJson("");
    ++out[c.is_string() ? c.get<std::string>() : c.dump()];
  }
  return out;
}

// A scratch directory with plugins/wchaos.so and a configuration on a fresh database.
// One handler execution from the audit file: [start, end) in steady clock ns.
struct GateSpan {
  std::string customer, run, step, attempt;
  long pid = 0;
  long long start = 0, end = -1;
};

// The executions of the audit file; one without its end line ends at its process's kill time
// (`killed`: pid -> steady clock ns), and is reported when its process was not killed.
std::vector<GateSpan> gate_spans(const std::filesystem::path& file,
                                 const std::map<long, long long>& killed) {
  std::map<std::string, GateSpan> open;  // by run, step and attempt
  std::vector<GateSpan> out;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string what;
    GateSpan s;
    long long t = 0;
    words >> what >> s.customer >> s.run >> s.step >> s.attempt >> s.pid >> t;
    const std::string id = s.run + " " + s.step + " " + s.attempt;
    if (what == "S") {
      s.start = t;
      open[id] = s;
    } else {
      REQUIRE(open.count(id) == 1);
      open[id].end = t;
      out.push_back(open[id]);
      open.erase(id);
    }
  }
  for (auto& [id, s] : open) {
    CAPTURE(id);
    REQUIRE(killed.count(s.pid) == 1);  // only a killed worker's handler has no end
    s.end = killed.at(s.pid);
    out.push_back(s);
  }
  return out;
}

// Whether process `pid` runs a handler now, by the audit file: an "S" line of it without its "E".
bool runs_handler(const std::filesystem::path& file, long pid) {
  std::set<std::string> open;  // by run, step and attempt
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string what, customer, run, step, attempt;
    long of = 0;
    words >> what >> customer >> run >> step >> attempt >> of;
    if (of != pid) continue;
    const std::string id = run + " " + step + " " + attempt;
    if (what == "S")
      open.insert(id);
    else
      open.erase(id);
  }
  return !open.empty();
}

// The most intervals open at once per key.
std::map<std::string, int> gate_peaks(
    const std::vector<std::pair<std::string, std::pair<long long, long long>>>& intervals) {
  std::map<std::string, std::vector<std::pair<long long, int>>> events;
  for (const auto& [key, span] : intervals) {
    events[key].emplace_back(span.first, +1);
    events[key].emplace_back(span.second, -1);
  }
  std::map<std::string, int> peaks;
  for (auto& [key, e] : events) {
    std::sort(e.begin(), e.end());  // an end before a start at the same instant
    int open = 0;
    for (const auto& [t, d] : e) peaks[key] = std::max(peaks[key], open += d);
  }
  return peaks;
}

}  // namespace

TEST_SUITE("concurrency_keys") {
  TEST_CASE(
      "a step's limit bounds its tasks running at once per key; a completion or a lapsed "
      "lease frees a slot") {
    auto env = flowreg::pgtest::claim_env("gate_step");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "charges";
    flow.options.timeout = 1500ms;
    flow.steps = {step("charge")};
    flow.steps[0].concurrency = gate_limit(2, "/customer");
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    // 6 runs of customer a, 3 of b, 1 of 42 (a number: its JSON text), 2 with no customer.
    std::vector<fdc::RunId> a;
    for (int i = 0; i < 6; ++i)
      a.push_back(flowreg::pgtest::start_one(env.store, key, {{"customer", "a"}}));
    for (int i = 0; i < 3; ++i) flowreg::pgtest::start_one(env.store, key, {{"customer", "b"}});
    flowreg::pgtest::start_one(env.store, key, {{"customer", 42}});
    flowreg::pgtest::start_one(env.store, key, {{"other", 1}});
    flowreg::pgtest::start_one(env.store, key, GateJson::object());
    CHECK(flowreg::pgtest::query_one(
              env.conninfo,
              "SELECT string_agg(DISTINCT gate, '|' ORDER BY gate) FROM flowreg.tasks") ==
          "charge:|charge:42|charge:a|charge:b");

    auto first = flowreg::pgtest::claim_some(env.store, {key}, 100, "gate-test");
    CHECK(per_customer(first) ==
          std::map<std::string, int>{{"", 2}, {"42", 1}, {"a", 2}, {"b", 2}});
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 100, "gate-test").empty());

    // A waiting run says why.
    const auto waiting = env.store.get_run(a[5]).value();
    REQUIRE(waiting.has_value());
    REQUIRE(waiting->waiting.has_value());
    CHECK(waiting->waiting->step == "charge");
    CHECK(waiting->waiting->key == "a");
    CHECK(waiting->waiting->limit == 2);
    CHECK(waiting->waiting->holding == 2);
    CHECK(flowreg::app::waiting_text(*waiting) ==
          "step 'charge': concurrency limit 2 reached for key \"a\" (2 tasks at once)");
    CHECK_FALSE(env.store.get_run(a[0]).value()->waiting.has_value());  // running

    // One of a's completes: one more of a, and only that.
    std::vector<fdc::ClaimedTask> one_a;
    for (const auto& t : first)
      if (t.input.value("customer", GateJson("")) == "a" && one_a.empty()) one_a.push_back(t);
    flowreg::pgtest::complete_all(env.store, one_a);
    auto next = flowreg::pgtest::claim_some(env.store, {key}, 100, "gate-test");
    CHECK(per_customer(next) == std::map<std::string, int>{{"a", 1}});

    // The workers holding the rest die: their leases lapse, and their slots come back (each task
    // once: requeued with its attempt, then claimed again within the limits).
    std::this_thread::sleep_for(1800ms);
    auto again = flowreg::pgtest::claim_some(env.store, {key}, 100, "gate-test");
    CHECK(per_customer(again) ==
          std::map<std::string, int>{{"", 2}, {"42", 1}, {"a", 2}, {"b", 2}});
    CHECK(flowreg::pgtest::query_one(
              env.conninfo,
              "SELECT count(*) FROM flowreg.tasks WHERE status = 'started' AND gate = "
              "'charge:a'") == "2");
    CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT max(attempt) FROM flowreg.tasks") ==
          "2");
  }

  TEST_CASE("one key with 100,000 queued runs does not delay another key's run by a claim") {
    auto env = flowreg::pgtest::claim_env("gate_fair");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "fair";
    flow.steps = {step("s")};
    flow.steps[0].concurrency = gate_limit(2, "/customer");
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    for (int batch = 0; batch < 20; ++batch) {
      std::vector<GateJson> inputs(5'000, GateJson{{"customer", "big"}});
      auto ids = env.store.start_runs(key.slug, key.version, inputs);
      REQUIRE_MESSAGE(ids, flowreg::testing::failure_text(ids));
    }
    flowreg::pgtest::query_one(env.conninfo, "ANALYZE flowreg.tasks");
    auto busy = flowreg::pgtest::claim_some(env.store, {key}, 64, "gate-test");
    CHECK(per_customer(busy) == std::map<std::string, int>{{"big", 2}});
    // Another key's runs, started after the backlog: the next claim takes them, whichever key
    // the claim's cursor stands at; the backlog's key stays at its limit.
    const auto small1 = flowreg::pgtest::start_one(env.store, key, {{"customer", "small"}});
    const auto small2 = flowreg::pgtest::start_one(env.store, key, {{"customer", "zz"}});
    auto next = flowreg::pgtest::claim_some(env.store, {key}, 64, "gate-test");
    std::set<fdc::RunId> got;
    for (const auto& t : next) got.insert(t.run_id);
    CHECK(got == std::set<fdc::RunId>{small1, small2});
    flowreg::pgtest::complete_all(env.store, busy);
    auto big = flowreg::pgtest::claim_some(env.store, {key}, 64, "gate-test");
    CHECK(per_customer(big) == std::map<std::string, int>{{"big", 2}});

    // Within the key, priority first: a run of the backlog's key started with priority 5 is the
    // next of the key claimed, before its 99,996 older runs.
    flowreg::detail::StartOptions urgent;
    urgent.priority = 5;
    const auto high = env.store.start_run(key.slug, key.version, {{"customer", "big"}}, urgent);
    REQUIRE_MESSAGE(high, flowreg::testing::failure_text(high));
    flowreg::pgtest::complete_all(env.store, std::vector<fdc::ClaimedTask>{big[0]});
    auto first_free = flowreg::pgtest::claim_some(env.store, {key}, 64, "gate-test");
    REQUIRE(first_free.size() == 1);
    CHECK(first_free[0].run_id == *high);
  }

  TEST_CASE(
      "a claim that fills its room stops at the last key it reached: the next goes on there") {
    // A step's limit and a flow's: 6 keys, 2 runs each; a claim of 3 takes a's two and b's first;
    // the next claim of 1 takes c's, not b's second (b was reached, c was not).
    auto env = flowreg::pgtest::claim_env("gate_reach");
    for (const auto& flow :
         {one_step_limited("by_step", 2, false), one_step_limited("by_flow", 2, true)}) {
      CAPTURE(flow.slug);
      const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
      for (const char* c : {"a", "b", "c", "d", "e", "f"})
        for (int i = 0; i < 2; ++i) flowreg::pgtest::start_one(env.store, key, {{"customer", c}});
      const auto first = flowreg::pgtest::claim_some(env.store, {key}, 3, "gate-test");
      CHECK(per_customer(first) == std::map<std::string, int>{{"a", 2}, {"b", 1}});
      const auto next = flowreg::pgtest::claim_some(env.store, {key}, 1, "gate-test");
      CHECK(per_customer(next) == std::map<std::string, int>{{"c", 1}});
      // Then round the keys: the rest of c, d, e, f, and b's second once the cursor wraps.
      const auto rest = flowreg::pgtest::claim_some(env.store, {key}, 100, "gate-test");
      CHECK(per_customer(rest) ==
            std::map<std::string, int>{{"b", 1}, {"c", 1}, {"d", 2}, {"e", 2}, {"f", 2}});
    }
  }

  TEST_CASE("within a key, tasks are claimed highest priority first, then oldest") {
    // A step's limit per key, a flow's limit, and a step's rate limit without a concurrency limit
    // (a gate of one bucket): in each, runs of one key started at priorities 0, 0, 7 (delayed by
    // an hour), -3, 4, 4, 0 are claimed one at a time as 4, 4, 0, 0, 0, -3: the delayed run's
    // level holds back none below it.
    auto env = flowreg::pgtest::claim_env("gate_priorities");
    for (const auto& flow : three_gates(1, std::nullopt)) {
      CAPTURE(flow.slug);
      const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
      std::map<fdc::RunId, std::string> names;
      const auto start = [&](std::optional<int> priority, const std::string& name,
                             std::optional<fdc::TimePoint> at = std::nullopt) {
        fdc::StartOptions options;
        options.priority = priority;
        options.start_at = at;
        auto id =
            env.store.start_run(key.slug, key.version, {{"customer", "c"}, {"n", name}}, options);
        REQUIRE_MESSAGE(id, flowreg::testing::failure_text(id));
        names[*id] = name;
      };
      start(std::nullopt, "old");
      start(0, "zero");
      start(7, "later", std::chrono::system_clock::now() + std::chrono::hours(1));
      start(-3, "low");
      start(4, "high1");
      start(4, "high2");
      start(std::nullopt, "young");
      // One task at a time (a limit of 1 per key; the rate-limited step: claims of room 1), each
      // completed before the next claim (a flow's gate: its run holds the slot until its second
      // step ends).
      std::string order;  // the runs' names, in the order claimed
      for (int i = 0; i < 20; ++i) {
        auto got = flowreg::pgtest::claim_some(env.store, {key}, 1, "gate-test");
        if (got.empty()) break;
        REQUIRE(got.size() == 1);
        const std::string name = names.at(got[0].run_id) + " ";
        if (!order.ends_with(name)) order += name;
        flowreg::pgtest::complete_all(env.store, got);
      }
      CHECK(order == "high1 high2 old zero young low ");
    }
  }

  TEST_CASE("between keys, a higher priority comes first, whichever key's turn it is") {
    // A step's limit, a flow's limit, and a step's rate limit with a bucket per key: 300 keys
    // with 2 queued runs each at priority 0, then one run of priority 5 of the last key and one of
    // priority 1 of the middle one: the next claim of 1 takes the first, the one after the second;
    // then a claim of 64 takes the first keys' runs of priority 0 in key order. Fails on the
    // claim of migration 0032, which visited the keys in key order whatever their tasks' levels.
    auto env = flowreg::pgtest::claim_env("gate_levels_first");
    for (const auto& flow : three_gates(2, "/customer")) {
      CAPTURE(flow.slug);
      const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
      std::vector<GateJson> inputs;
      for (int k = 0; k < 300; ++k)
        for (int i = 0; i < 2; ++i) inputs.push_back({{"customer", fmt::format("k{:03}", k)}});
      auto ids = env.store.start_runs(key.slug, key.version, inputs);
      REQUIRE_MESSAGE(ids, flowreg::testing::failure_text(ids));
      const auto start = [&](int priority, const char* customer) {
        fdc::StartOptions options;
        options.priority = priority;
        auto id = env.store.start_run(key.slug, key.version, {{"customer", customer}}, options);
        REQUIRE_MESSAGE(id, flowreg::testing::failure_text(id));
        return *id;
      };
      const auto urgent = start(5, "k299");
      const auto sooner = start(1, "k150");
      const auto first = flowreg::pgtest::claim_some(env.store, {key}, 1, "gate-test");
      REQUIRE(first.size() == 1);
      CHECK(first[0].run_id == urgent);
      const auto second = flowreg::pgtest::claim_some(env.store, {key}, 1, "gate-test");
      REQUIRE(second.size() == 1);
      CHECK(second[0].run_id == sooner);
      // The level-0 pass: from the first key, 2 runs per key, the 32 first keys.
      const auto rest = flowreg::pgtest::claim_some(env.store, {key}, 64, "gate-test");
      std::map<std::string, int> expected;
      for (int k = 0; k < 32; ++k) expected[fmt::format("k{:03}", k)] = 2;
      CHECK(per_customer(rest) == expected);
    }
  }

  TEST_CASE("a flow's limit bounds its runs active at once per key, from first claim to end") {
    auto env = flowreg::pgtest::claim_env("gate_flow");
    using flowreg::pgtest::step;
    // A chain (a -> b) and a DAG of two roots (x, y -> z), one run active per key.
    flowreg::FlowDef chain;
    chain.slug = "chain";
    chain.steps = {step("a"), step("b", {"a"})};
    chain.concurrency = gate_limit(1, "/k");
    const auto ckey = flowreg::pgtest::store_at_shape(env.store, chain);
    flowreg::FlowDef dag;
    dag.slug = "dag";
    dag.steps = {step("x"), step("y"), step("z", {"x", "y"})};
    dag.concurrency = gate_limit(1, std::nullopt);  // one key for the whole flow
    const auto dkey = flowreg::pgtest::store_at_shape(env.store, dag);

    const auto c1 = flowreg::pgtest::start_one(env.store, ckey, {{"k", "p"}});
    const auto c2 = flowreg::pgtest::start_one(env.store, ckey, {{"k", "p"}});
    const auto c3 = flowreg::pgtest::start_one(env.store, ckey, {{"k", "q"}});
    auto t1 = flowreg::pgtest::claim_some(env.store, {ckey}, 10, "gate-test");
    std::set<fdc::RunId> runs;
    for (const auto& t : t1) runs.insert(t.run_id);
    CHECK(runs == std::set<fdc::RunId>{c1, c3});
    CHECK(env.store.get_run(c1).value()->held_key == "p");
    const auto w = env.store.get_run(c2).value();
    REQUIRE(w->waiting.has_value());
    CHECK(w->waiting->step.empty());
    CHECK(flowreg::app::waiting_text(*w) ==
          "concurrency limit 1 reached for key \"p\" (1 run at once)");
    // c1's first step ends: its run still holds the slot; its next step is claimed, not c2.
    flowreg::pgtest::complete_all(env.store, t1);
    auto t2 = flowreg::pgtest::claim_some(env.store, {ckey}, 10, "gate-test");
    runs.clear();
    for (const auto& t : t2) runs.insert(t.run_id);
    CHECK(runs == std::set<fdc::RunId>{c1, c3});
    for (const auto& t : t2) CHECK(t.step_slug == "b");
    flowreg::pgtest::complete_all(env.store, t2);
    // c1 has ended: c2 gets the slot.
    auto t3 = flowreg::pgtest::claim_some(env.store, {ckey}, 10, "gate-test");
    REQUIRE(t3.size() == 1);
    CHECK(t3[0].run_id == c2);

    // The DAG: the first claim admits one run and takes both its roots; the other waits.
    const auto d1 = flowreg::pgtest::start_one(env.store, dkey, GateJson::object());
    const auto d2 = flowreg::pgtest::start_one(env.store, dkey, GateJson::object());
    auto roots = flowreg::pgtest::claim_some(env.store, {dkey}, 10, "gate-test");
    REQUIRE(roots.size() == 2);
    CHECK(roots[0].run_id == d1);
    CHECK(roots[1].run_id == d1);
    CHECK(flowreg::pgtest::claim_some(env.store, {dkey}, 10, "gate-test").empty());
    // A limit without a key: every run has the default key "", and runs show says so.
    CHECK(flowreg::app::waiting_text(*env.store.get_run(d2).value()) ==
          "concurrency limit 1 reached for the default key \"\" (the run's input has no value at "
          "the limit's key, or the limit has none) (1 run at once)");
    // A failed run frees its slot too.
    std::vector<fdc::Failure> failures{{roots[0].id, roots[0].attempt, "boom", true}};
    auto failed = env.store.fail(failures);
    REQUIRE_MESSAGE(failed, flowreg::testing::failure_text(failed));
    CHECK(env.store.get_run(d1).value()->status == fdc::RunStatus::failed);
    auto d2roots = flowreg::pgtest::claim_some(env.store, {dkey}, 10, "gate-test");
    CHECK(d2roots.size() == 2);
    for (const auto& t : d2roots) CHECK(t.run_id == d2);
  }

  TEST_CASE("a step that loses its limit frees its queued tasks; a long key is kept short") {
    auto env = flowreg::pgtest::claim_env("gate_change");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "changing";
    flow.steps = {step("s")};
    flow.steps[0].concurrency = gate_limit(1, "/k");
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    for (int i = 0; i < 3; ++i) flowreg::pgtest::start_one(env.store, key, {{"k", "same"}});
    const auto long_run =
        flowreg::pgtest::start_one(env.store, key, {{"k", std::string(5'000, 'x')}});
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT max(octet_length(gate)) FROM flowreg.tasks") ==
          std::to_string(2 + 64 + 5 + 32));
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 10, "gate-test").size() == 2);
    // The same version without the limit (an option, not the shape): the queued tasks are free.
    flow.steps[0].concurrency.reset();
    REQUIRE(flowreg::pgtest::store_at_shape(env.store, flow).version == key.version);
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 10, "gate-test").size() == 2);
    CHECK(env.store.get_run(long_run).value()->status == fdc::RunStatus::started);
  }

  TEST_CASE(
      "3 workers, 2 of them killed with SIGKILL while they run: no key ever exceeds its "
      "limit, and every run completes") {
    namespace fs = std::filesystem;
    using Clock = std::chrono::steady_clock;
    auto s = flowreg::pgtest::wchaos_scene("gate_workers");
    const fs::path audit = s.dir / "audit";
    const auto now_ns = [] { return Clock::now().time_since_epoch().count(); };
    std::vector<flowreg::test::Child> workers;
    for (const char* id : {"a", "b", "c"}) {
      workers.push_back(s.worker(id, {"--lease", "1s", "--concurrency", "8", "--batch", "8"}));
      s.wait_serving(id, "wchaos_gated");
    }
    // 4 customers: 8 tasks each of a step limited to 2 per customer, 6 runs each of a chain
    // limited to 1 run per customer; each flow's runs started in one transaction, so that every
    // key has queued tasks from the start.
    std::vector<nlohmann::json> step_inputs, chain_inputs;
    for (int i = 0; i < 8; ++i)
      for (const char* c : {"c1", "c2", "c3", "c4"})
        step_inputs.push_back({{"customer", c}, {"audit", audit.string()}, {"ms", 150}});
    for (int i = 0; i < 6; ++i)
      for (const char* c : {"c1", "c2", "c3", "c4"})
        chain_inputs.push_back({{"customer", c}, {"audit", audit.string()}, {"ms", 150}});
    std::vector<fdc::RunId> runs = s.start_many("wchaos_gated", step_inputs);
    for (const auto& run : s.start_many("wchaos_gated_runs", chain_inputs)) runs.push_back(run);
    // Twice, kill one of a, b and c while it runs a handler (one started and not ended, by the
    // audit file); a fourth worker takes over.
    std::map<long, long long> killed;
    for (int kill = 0; kill < 2; ++kill) {
      std::size_t victim = 0;
      REQUIRE(flowreg::pgtest::eventually(
          [&] {
            for (victim = 0; victim < 3; ++victim)
              if (killed.count(workers[victim].pid()) == 0 &&
                  runs_handler(audit, workers[victim].pid()))
                return true;
            return false;
          },
          60s));
      killed[workers[victim].pid()] = now_ns();
      workers[victim].signal(SIGKILL);
      CHECK(workers[victim].wait(10s) == 128 + SIGKILL);
    }
    workers.push_back(s.worker("d", {"--lease", "1s", "--concurrency", "8", "--batch", "8"}));
    for (const auto& run : runs)
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 120s),
                      std::string(s.err("a") + s.err("b") + s.err("c") + s.err("d")));
    for (const auto& run : runs) CHECK(s.run_field(run, "status") == "completed");

    const auto spans = gate_spans(audit, killed);
    // Tasks of the gated step per customer; runs of the gated chain per customer (a run from its
    // first start to its last end).
    std::vector<std::pair<std::string, std::pair<long long, long long>>> tasks, chain_runs;
    std::map<std::string, std::pair<std::string, std::pair<long long, long long>>> by_run;
    int killed_spans = 0;
    for (const auto& span : spans) {
      killed_spans += killed.count(span.pid) == 1 && span.end == killed.at(span.pid);
      if (span.step == "only") {
        tasks.push_back({span.customer, {span.start, span.end}});
        continue;
      }
      auto [it, fresh] =
          by_run.try_emplace(span.run, span.customer, std::make_pair(span.start, span.end));
      if (!fresh) {
        it->second.second.first = std::min(it->second.second.first, span.start);
        it->second.second.second = std::max(it->second.second.second, span.end);
      }
    }
    for (const auto& [run, entry] : by_run) chain_runs.push_back(entry);
    CHECK(killed_spans >= 1);  // the kills interrupted handlers
    CHECK(by_run.size() == 24);
    const auto task_peaks = gate_peaks(tasks);
    const auto run_peaks = gate_peaks(chain_runs);
    REQUIRE(task_peaks.size() == 4);
    REQUIRE(run_peaks.size() == 4);
    int reached = 0;
    for (const auto& [customer, peak] : task_peaks) {
      CAPTURE(customer);
      CHECK(peak <= 2);
      reached += peak == 2;
    }
    CHECK(reached >= 1);  // the limit was in use, not merely never approached
    for (const auto& [customer, peak] : run_peaks) {
      CAPTURE(customer);
      CHECK(peak == 1);
    }
    for (auto& w : workers)
      if (w.wait(0ms) == std::nullopt) {
        w.signal(SIGTERM);
        CHECK(w.wait(30s) == 0);
      }
  }

  TEST_CASE("flows show prints the limits; runs show and the API's run say why a run waits") {
    auto s = flowreg::pgtest::wchaos_scene("gate_cli");
    const auto flowreg = [&](std::vector<std::string> args) { return s.cli(std::move(args)); };
    const auto shown = flowreg({"flows", "show", "wchaos_gated_runs"});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    CHECK(shown.out.find("concurrency=1 per /customer") != std::string::npos);
    const auto step_shown = flowreg({"flows", "show", "wchaos_gated"});
    CHECK(step_shown.out.find("(concurrency=2 per /customer)") != std::string::npos);
    const auto as_json = flowreg({"flows", "show", "wchaos_gated", "--json"});
    REQUIRE_MESSAGE(as_json.exit_code == 0, as_json.err);
    CHECK(GateJson::parse(as_json.out)["steps"][0]["concurrency"] ==
          GateJson{{"limit", 2}, {"key", "/customer"}});

    // Three runs of one customer; two of its tasks claimed by hand: the third waits.
    std::vector<fdc::RunId> ids;
    for (int i = 0; i < 3; ++i) {
      const auto r = flowreg({"run", "wchaos_gated", "--input",
                              R"({"customer": "c1", "audit": "/dev/null"})", "--json"});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      ids.push_back(GateJson::parse(r.out)["id"].get<std::string>());
    }
    auto store = fdc::RunStore::connect(s.conninfo);
    REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
    const fdc::FlowKey key{
        "wchaos_gated", flowreg::pgtest::query_one(s.conninfo,
                                                   "SELECT version FROM flowreg.flows WHERE slug = "
                                                   "'wchaos_gated'")};
    CHECK(flowreg::pgtest::claim_some(*store, {key}, 10, "gate-test").size() == 2);
    std::string waiting_id;
    for (const auto& id : ids)
      if (flowreg::pgtest::query_one(
              s.conninfo, "SELECT status FROM flowreg.tasks WHERE run_id = '" + id + "'") ==
          "queued")
        waiting_id = id;
    REQUIRE(!waiting_id.empty());
    const auto text = flowreg({"runs", "show", waiting_id});
    REQUIRE_MESSAGE(text.exit_code == 0, text.err);
    CHECK(text.out.find("waiting: step 'only': concurrency limit 2 reached for key \"c1\" (2 "
                        "tasks at once)") != std::string::npos);
    const auto j = flowreg({"runs", "show", waiting_id, "--json"});
    REQUIRE_MESSAGE(j.exit_code == 0, j.err);
    const auto c = GateJson::parse(j.out)["concurrency"];
    CHECK(c["held_key"].is_null());
    CHECK(c["waiting"]["step"] == "only");
    CHECK(c["waiting"]["key"] == "c1");
    CHECK(c["waiting"]["limit"] == 2);
    CHECK(c["waiting"]["holding"] == 2);
  }
}
