// Rate limits per key (migration 0024): a flow's or a step's `rate_limit: {limit, per, key}` lets
// at most `limit` of its tasks start per `per` with the same key, a token bucket of `limit` tokens.
// Claims through RunStore on the shared cluster (a period of an hour makes what a claim takes
// exact: no token comes back during a test): a bucket per key, one bucket under a concurrency
// limit per key, a flow's bucket shared by its steps, a waiting task that spends no attempt, what
// get_run says of a waiting run, the buckets idle for a day pruned; then real `flowreg worker`
// processes, one killed with SIGKILL, audited by the handler of tests/plugins/wchaos.cpp; and the
// CLI.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <pqxx/pqxx>
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

namespace fdr = flowreg::detail;
using RateJson = nlohmann::json;
using namespace std::chrono_literals;

flowreg::RateLimit rate_of(int limit, flowreg::Millis per, std::optional<std::string> key) {
  flowreg::RateLimit r;
  r.limit = limit;
  r.per = per;
  r.key = std::move(key);
  return r;
}

std::map<std::string, int> rate_per_customer(const std::vector<fdr::ClaimedTask>& tasks) {
  std::map<std::string, int> out;
  for (const auto& t : tasks) ++out[t.input.value("customer", std::string())];
  return out;
}

}  // namespace

TEST_SUITE("rate_limits") {
  TEST_CASE(
      "a bucket per key: a claim takes each key's tokens and no more; waiting costs no attempt") {
    auto env = flowreg::pgtest::claim_env("rate_keyed");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "calls";
    flow.steps = {step("call")};
    flow.steps[0].rate_limit = rate_of(2, 3600s, "/customer");
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    std::vector<fdr::RunId> a;
    for (int i = 0; i < 5; ++i) {
      a.push_back(flowreg::pgtest::start_one(env.store, key, {{"customer", "a"}}));
      flowreg::pgtest::start_one(env.store, key, {{"customer", "b"}});
    }
    flowreg::pgtest::start_one(env.store, key, {{"customer", "c"}});
    const auto first = flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test");
    CHECK(rate_per_customer(first) == std::map<std::string, int>{{"a", 2}, {"b", 2}, {"c", 1}});
    flowreg::pgtest::complete_all(env.store, first);
    // The buckets of a and b are empty (no token comes back within the hour); c has one left.
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").empty());
    const auto c2 = flowreg::pgtest::start_one(env.store, key, {{"customer", "c"}});
    const auto second = flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test");
    REQUIRE(second.size() == 1);
    CHECK(second[0].run_id == c2);
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").empty());
    // The waiting tasks spent no attempt, and say why they wait.
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT count(*) FROM flowreg.tasks WHERE status = 'queued' "
                                     "AND attempt = 0") == "6");
    const auto waiting = env.store.get_run(a.back()).value();
    REQUIRE(waiting.has_value());
    REQUIRE(waiting->waiting.has_value());
    CHECK(waiting->waiting->step == "call");
    CHECK(waiting->waiting->key == "a");
    CHECK(waiting->waiting->limit == 0);
    CHECK(waiting->waiting->rate_limit == 2);
    CHECK(waiting->waiting->rate_per_ms == 3600000);
    REQUIRE(waiting->waiting->rate_until.has_value());
    CHECK(*waiting->waiting->rate_until > std::chrono::system_clock::now() + 1700s);
    const std::string text = flowreg::app::waiting_text(*waiting);
    CAPTURE(text);
    CHECK(text.starts_with("step 'call': rate limited until "));
    CHECK(text.ends_with(": rate limit 2 per 1h reached for key \"a\""));
    const auto j = flowreg::app::run_json(*waiting);
    CHECK(j["concurrency"]["waiting"]["rate_limit"] == RateJson{{"limit", 2}, {"per", "1h"}});
    CHECK(j["concurrency"]["waiting"]["rate_limited_until"].is_string());
    CHECK(j["concurrency"]["waiting"]["limit"].is_null());

    // The step's rate limit becomes a concurrency limit of 1 per customer: its waiting tasks move
    // to the new gate (none is left in one no claim visits), and a claim takes one per customer.
    flow.steps[0].rate_limit.reset();
    flow.steps[0].concurrency = flowreg::Concurrency{1, std::string("/customer")};
    CHECK(flowreg::pgtest::store_at_shape(env.store, flow).version == key.version);
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT string_agg(DISTINCT gate, ',' ORDER BY gate) FROM "
                                     "flowreg.tasks WHERE status = 'queued'") == "call:a,call:b");
    const auto moved = flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test");
    CHECK(rate_per_customer(moved) == std::map<std::string, int>{{"a", 1}, {"b", 1}});
  }

  TEST_CASE("tokens come back at limit per period, never more than the limit at once") {
    auto env = flowreg::pgtest::claim_env("rate_refill");
    using flowreg::pgtest::step;
    using Clock = std::chrono::steady_clock;
    flowreg::FlowDef flow;
    flow.slug = "ticks";
    flow.steps = {step("tick")};
    flow.steps[0].rate_limit = rate_of(5, 1000ms, std::nullopt);
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    for (int i = 0; i < 40; ++i) flowreg::pgtest::start_one(env.store, key, {{"i", i}});
    const auto begin = Clock::now();
    std::size_t taken = flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").size();
    CHECK(taken == 5);  // a full bucket
    // Claims for about 1.5 s: at most 5 + 5 per second elapsed (measured after each claim, so
    // that a slow machine only widens the bound), and tokens do come back.
    while (Clock::now() - begin < 1500ms) {
      std::this_thread::sleep_for(50ms);
      taken += flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").size();
      const double elapsed = std::chrono::duration<double>(Clock::now() - begin).count();
      CAPTURE(elapsed);
      CHECK(static_cast<double>(taken) <= 5 + 5 * elapsed + 1e-9);
    }
    CHECK(taken >= 7);
    // After a pause longer than the period the bucket is full again, not fuller.
    std::this_thread::sleep_for(2200ms);
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").size() == 5);
    // A worker's call that finds the bucket empty is told when it has a token again (a refill of
    // 5 a second: at most 200 ms, for one token, or for the 5 of a claim of 5), not left to its
    // next poll.
    auto worked = env.store.work("rate-test", {}, {}, std::span(&key, 1), 5, std::nullopt);
    REQUIRE_MESSAGE(worked, flowreg::testing::failure_text(worked));
    CHECK(worked->claimed.size() <= 1);
    REQUIRE(worked->next_due_in.has_value());
    CHECK(*worked->next_due_in <= 1001ms);
    CHECK(*worked->next_due_in >= 0ms);
  }

  TEST_CASE(
      "a limit of 1,024 or more keeps its tokens in 4 shards: claims take them side by side, and "
      "all of them together never more than the limit") {
    auto env = flowreg::pgtest::claim_env("rate_shards");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "bulk";
    flow.steps = {step("hit")};
    // A day's period: a token comes back every 43 s, none to a shard (500 each) within the test.
    flow.steps[0].rate_limit = rate_of(2000, 24h, std::nullopt);
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    for (int i = 0; i < 2100; ++i) flowreg::pgtest::start_one(env.store, key, {{"i", i}});
    const std::string claim =
        "SELECT cardinality(flowreg._claim_gated('{}', ARRAY['bulk'], "
        "ARRAY['" +
        key.version + "'], 100, 600000))";
    // A claim holds the shard it took tokens from until its transaction ends; another claim, in
    // the meantime, takes from another shard rather than waiting (a wait would time out here).
    pqxx::connection a(env.conninfo);
    pqxx::connection b(env.conninfo);
    pqxx::work held(a);
    CHECK(held.exec1(fmt::format(fmt::runtime(claim), "a"))[0].as<int>() == 100);
    {
      pqxx::work beside(b);
      beside.exec0("SET LOCAL statement_timeout = '10s'");
      CHECK(beside.exec1(fmt::format(fmt::runtime(claim), "b"))[0].as<int>() == 100);
      beside.commit();
    }
    held.commit();
    // Every claim after: 2,000 in all, then none (the shards are empty; 100 runs wait).
    std::size_t taken = 200;
    for (int i = 0; i < 100; ++i) {
      const auto got = flowreg::pgtest::claim_some(env.store, {key}, 64, "rate-test").size();
      if (got == 0) break;
      taken += got;
    }
    CHECK(taken == 2000);
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 64, "rate-test").empty());
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT count(*) || ' ' || sum(round(tokens)) FROM "
                                     "flowreg.rate_buckets WHERE flow_slug = 'bulk'") == "4 0");
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT count(*) FROM flowreg.tasks WHERE status = 'queued' "
                                     "AND attempt = 0") == "100");
    // A waiting run says until when: the next token of a shard, in about 173 s (a day / 500).
    const auto waiting_id = flowreg::pgtest::query_one(
        env.conninfo, "SELECT run_id FROM flowreg.tasks WHERE status = 'queued' LIMIT 1");
    const auto waiting = env.store.get_run(waiting_id).value();
    REQUIRE(waiting.has_value());
    REQUIRE(waiting->waiting.has_value());
    REQUIRE(waiting->waiting->rate_until.has_value());
    CHECK(*waiting->waiting->rate_until > std::chrono::system_clock::now() + 100s);
    CHECK(*waiting->waiting->rate_until < std::chrono::system_clock::now() + 180s);
  }

  TEST_CASE("runs prune deletes the buckets idle for a day (full), walking them in batches") {
    auto env = flowreg::pgtest::claim_env("rate_prune");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "calls";
    flow.steps = {step("call")};
    flow.steps[0].rate_limit = rate_of(2, 3'600'000ms, "/customer");
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    // Seven customers, each with a bucket: two tokens taken from each (the hour's limit).
    for (int c = 0; c < 7; ++c)
      for (int i = 0; i < 3; ++i)
        flowreg::pgtest::start_one(env.store, key, {{"customer", "c" + std::to_string(c)}});
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").size() == 14);
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").empty());
    const auto buckets = [&] {
      return flowreg::pgtest::query_one(
          env.conninfo, "SELECT string_agg(key, ',' ORDER BY key) FROM flowreg.rate_buckets");
    };
    REQUIRE(buckets() == "c0,c1,c2,c3,c4,c5,c6");
    // Five of them last taken from two days ago, one a day less a minute ago: only the five go,
    // over batches of 2 buckets.
    flowreg::pgtest::query_one(env.conninfo,
                               "UPDATE flowreg.rate_buckets SET at = now() - interval '2 days' "
                               "WHERE key IN ('c0', 'c2', 'c3', 'c5', 'c6') RETURNING 1");
    flowreg::pgtest::query_one(env.conninfo,
                               "UPDATE flowreg.rate_buckets SET at = now() - interval '1 day' + "
                               "interval '1 minute' WHERE key = 'c4' RETURNING 1");
    auto pruned = env.store.prune_rate_buckets(2);
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 5);
    CHECK(buckets() == "c1,c4");
    // A bucket pruned is a full one: the third tasks of its customers are claimed at once, and
    // c4's (its bucket, kept, refilled over its hour); c1's waits for its tokens.
    const auto third = flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test");
    CHECK(rate_per_customer(third) ==
          std::map<std::string, int>{
              {"c0", 1}, {"c2", 1}, {"c3", 1}, {"c4", 1}, {"c5", 1}, {"c6", 1}});
    CHECK(buckets() == "c0,c1,c2,c3,c4,c5,c6");
    pruned = env.store.prune_rate_buckets();
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(*pruned == 0);
    CHECK(!env.store.prune_rate_buckets(0).has_value());
  }

  TEST_CASE("one bucket under a concurrency limit per key; a flow's bucket is its steps'") {
    auto env = flowreg::pgtest::claim_env("rate_mixed");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "pushes";
    flow.steps = {step("push")};
    flow.steps[0].concurrency = flowreg::Concurrency{1, std::string("/customer")};
    flow.steps[0].rate_limit = rate_of(3, 3600s, std::nullopt);
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    for (const char* c : {"a", "b", "c", "d", "e"}) {
      flowreg::pgtest::start_one(env.store, key, {{"customer", c}});
      flowreg::pgtest::start_one(env.store, key, {{"customer", c}});
    }
    const auto first = flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test");
    CHECK(first.size() == 3);  // the bucket's 3 tokens, one task per customer (limit 1)
    for (const auto& [customer, n] : rate_per_customer(first)) CHECK(n == 1);
    flowreg::pgtest::complete_all(env.store, first);
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 100, "rate-test").empty());

    // A chain under its flow's limit: the second step's tasks spend the same bucket.
    flowreg::FlowDef chain;
    chain.slug = "chain";
    chain.steps = {step("a"), step("b", {"a"})};
    chain.rate_limit = rate_of(3, 3600s, std::nullopt);
    const auto ckey = flowreg::pgtest::store_at_shape(env.store, chain);
    flowreg::pgtest::start_one(env.store, ckey, {{"n", 1}});
    flowreg::pgtest::start_one(env.store, ckey, {{"n", 2}});
    const auto roots = flowreg::pgtest::claim_some(env.store, {ckey}, 100, "rate-test");
    REQUIRE(roots.size() == 2);
    flowreg::pgtest::complete_all(env.store, roots);
    const auto seconds = flowreg::pgtest::claim_some(env.store, {ckey}, 100, "rate-test");
    REQUIRE(seconds.size() == 1);  // one token left
    CHECK(seconds[0].step_slug == "b");
    CHECK(flowreg::pgtest::claim_some(env.store, {ckey}, 100, "rate-test").empty());
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT count(*) FROM flowreg.rate_buckets WHERE flow_slug = "
                                     "'chain' AND scope = '' AND key = '' AND tokens < 1") == "1");

    // A step that loses its rate limit frees its queued tasks.
    flowreg::FlowDef freed = chain;
    freed.rate_limit.reset();
    CHECK(flowreg::pgtest::store_at_shape(env.store, freed).version == ckey.version);
    CHECK(flowreg::pgtest::claim_some(env.store, {ckey}, 100, "rate-test").size() == 1);
  }

  TEST_CASE(
      "3 workers, one killed with SIGKILL: no customer starts more tasks than its bucket "
      "allows, and every run completes") {
    namespace fs = std::filesystem;
    using Clock = std::chrono::steady_clock;
    auto s = flowreg::pgtest::wchaos_scene("rate_workers");
    const fs::path audit = s.dir / "audit";
    std::vector<flowreg::test::Child> workers;
    for (const char* id : {"a", "b", "c"}) {
      workers.push_back(s.worker(id, {"--lease", "1s", "--concurrency", "8", "--batch", "8"}));
      s.wait_serving(id, "wchaos_rated");
    }
    // 2 customers, 40 runs each, under 10 task starts per second per customer.
    std::vector<fdr::RunId> runs;
    for (int i = 0; i < 40; ++i)
      for (const char* c : {"c1", "c2"})
        runs.push_back(
            s.start("wchaos_rated", {{"customer", c}, {"audit", audit.string()}, {"ms", 20}}));
    const std::string pid = std::to_string(workers[0].pid());
    REQUIRE(flowreg::pgtest::eventually(
        [&] {
          return flowreg::pgtest::read_file(audit).find(" " + pid + " ") != std::string::npos;
        },
        60s));
    workers[0].signal(SIGKILL);
    CHECK(workers[0].wait(10s) == 128 + SIGKILL);
    for (const auto& run : runs)
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 120s),
                      std::string(s.err("b") + s.err("c")));
    for (const auto& run : runs) CHECK(s.run_field(run, "status") == "completed");

    // The starts per customer, in steady clock ns.
    std::map<std::string, std::vector<long long>> starts;
    std::ifstream in(audit);
    std::string line;
    int retried = 0;
    while (std::getline(in, line)) {
      std::istringstream words(line);
      std::string what, customer, run, step, attempt;
      long pid_of = 0;
      long long t = 0;
      words >> what >> customer >> run >> step >> attempt >> pid_of >> t;
      if (what != "S") continue;
      starts[customer].push_back(t);
      retried += attempt != "1";
    }
    REQUIRE(starts.size() == 2);
    for (auto& [customer, ts] : starts) {
      CAPTURE(customer);
      std::sort(ts.begin(), ts.end());
      CHECK(ts.size() >= 40);
      // A bucket of 10 refilled at 10/s: in any second at most 10 + 10 starts; the claim's time
      // and the handler's start differ by the dispatch, so a window is widened by 300 ms.
      std::size_t most = 0;
      for (std::size_t i = 0; i < ts.size(); ++i) {
        const auto end = std::upper_bound(ts.begin(), ts.end(), ts[i] + 1'000'000'000LL);
        most = std::max(most, static_cast<std::size_t>(end - ts.begin()) - i);
      }
      CHECK(most <= 23);
      // 40 starts need at least 3 s of refills after the first 10.
      CHECK(ts.back() - ts.front() >= 2'700'000'000LL);
    }
    // The kill interrupted a few attempts at most; a task waiting for a token spent none.
    CHECK(retried <= 8);
    (void)Clock::now();
    for (auto& w : workers)
      if (w.wait(0ms) == std::nullopt) {
        w.signal(SIGTERM);
        CHECK(w.wait(30s) == 0);
      }
  }

  TEST_CASE("flows show prints a rate limit; runs show says until when a run is rate limited") {
    auto s = flowreg::pgtest::wchaos_scene("rate_cli");
    const auto flowreg = [&](std::vector<std::string> args) { return s.cli(std::move(args)); };
    const auto shown = flowreg({"flows", "show", "wchaos_rated"});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    CHECK(shown.out.find("rate_limit=10 per 1s per /customer") != std::string::npos);
    const auto as_json = flowreg({"flows", "show", "wchaos_rated", "--json"});
    REQUIRE_MESSAGE(as_json.exit_code == 0, as_json.err);
    CHECK(RateJson::parse(as_json.out)["rate_limit"] ==
          RateJson{{"limit", 10}, {"per", "1s"}, {"key", "/customer"}});
    // The flows are stored by a worker; of 2 runs of the hourly flow, one is claimed by hand
    // (the bucket's one token), the other waits.
    auto w = s.worker("a", {"--concurrency", "1"});
    s.wait_serving("a", "wchaos_hourly");
    w.signal(SIGTERM);
    CHECK(w.wait(30s) == 0);
    const auto first = s.start("wchaos_hourly", {{"n", 1}});
    const auto second = s.start("wchaos_hourly", {{"n", 2}});
    auto store = fdr::RunStore::connect(s.conninfo);
    REQUIRE(store);
    const fdr::FlowKey key{
        "wchaos_hourly",
        flowreg::pgtest::query_one(
            s.conninfo, "SELECT version FROM flowreg.flows WHERE slug = 'wchaos_hourly'")};
    const auto claimed = flowreg::pgtest::claim_some(*store, {key}, 100, "rate-test");
    REQUIRE(claimed.size() == 1);
    CHECK(claimed[0].run_id == first);
    const std::string waiting_id = second;
    const auto hourly = flowreg({"flows", "show", "wchaos_hourly"});
    CHECK(hourly.out.find("(rate_limit=1 per 1h)") != std::string::npos);
    const auto run = flowreg({"runs", "show", waiting_id});
    REQUIRE_MESSAGE(run.exit_code == 0, run.err);
    CAPTURE(run.out);
    CHECK(run.out.find("waiting: step 'only': rate limited until ") != std::string::npos);
    CHECK(run.out.find("rate limit 1 per 1h reached for the default key") != std::string::npos);
  }
}
