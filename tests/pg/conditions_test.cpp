// Conditional steps (migration 0027, docs/flows.md#conditional-steps). Claims through RunStore on
// the shared cluster: a DAG with two branches, a root step with a condition on the run's input, a
// trigger: any, skips that propagate to a step's dependents and stop at a trigger: any that has a
// completed dependency; the input of a step after a skipped one (no key for it) and the run's
// output (its completed leaves'); a one-step flow and a chain whose step has a condition (neither
// gets its fast layout); a retry from a failed step keeps the skips. Then real `flowreg worker`
// processes run 40 runs of a branching flow while one of them is SIGKILLed and started again:
// each step runs (once per attempt, audited) exactly when the rule says, and is skipped otherwise.
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "app/forms.hpp"
#include "pg/claim_env.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdr = flowreg::detail;
using CondJson = nlohmann::json;
using namespace std::chrono_literals;

flowreg::StepDef when_step(const std::string& slug, std::vector<std::string> deps,
                           std::optional<CondJson> when,
                           flowreg::Trigger trigger = flowreg::Trigger::all) {
  auto s = flowreg::pgtest::step(slug, std::move(deps));
  s.when = std::move(when);
  s.trigger = trigger;
  return s;
}

// The output of `run`, which must have completed (none: nullopt).
std::optional<CondJson> completed_output(fdr::RunStore& store, const fdr::RunId& run) {
  auto got = store.get_run(run);
  REQUIRE_MESSAGE(got, flowreg::testing::failure_text(got));
  REQUIRE(got->has_value());
  CHECK((*got)->status == fdr::RunStatus::completed);
  return (*got)->output;
}

// Claims every task ready now and completes each with `output(step slug, input)`; the tasks
// claimed, "slug" each, sorted.
std::vector<std::string> drain_once(
    fdr::RunStore& store, const fdr::FlowKey& key,
    const std::function<CondJson(const std::string&, const CondJson&)>& output,
    std::map<std::string, CondJson>* inputs = nullptr) {
  auto claimed = flowreg::pgtest::claim_some(store, {key}, 100, "cond-test");
  std::vector<fdr::Completion> done;
  std::vector<std::string> slugs;
  for (const auto& t : claimed) {
    done.push_back({t.id, t.attempt, output(t.step_slug, t.input)});
    slugs.push_back(t.step_slug);
    if (inputs) (*inputs)[t.step_slug] = t.input;
  }
  auto rejected = store.complete(done);
  REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
  CHECK(rejected->empty());
  std::sort(slugs.begin(), slugs.end());
  return slugs;
}

}  // namespace

TEST_SUITE("conditions") {
  TEST_CASE("when and skips on a DAG with branches; trigger any; the run's output") {
    auto env = flowreg::pgtest::claim_env("cond_dag");
    flowreg::FlowDef flow;
    flow.slug = "checkout";
    flow.steps = {
        when_step("route", {}, std::nullopt),
        when_step("card", {"route"}, CondJson{{"at", "/route/pay"}, {"equals", "card"}}),
        when_step("cash", {"route"}, CondJson{{"at", "/route/pay"}, {"in", {"cash", "voucher"}}}),
        when_step("receipt", {"card"}, std::nullopt),
        when_step("notify", {"card", "cash"}, std::nullopt, flowreg::Trigger::any),
        when_step("vip", {}, CondJson{{"at", "/vip"}, {"exists", true}}),
        when_step("close", {"receipt", "vip"}, std::nullopt),
    };
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    const auto echo = [](const std::string& slug, const CondJson& in) {
      return slug == "route" ? in : CondJson{{"by", slug}};
    };

    SUBCASE("card, not vip: cash skipped; notify runs on card alone; close skipped via vip") {
      const auto run = flowreg::pgtest::start_one(env.store, key, {{"pay", "card"}});
      // vip was skipped at the start: its condition reads the run's input.
      CHECK(flowreg::pgtest::step_states(env.store, run) ==
            "card=created cash=created close=created notify=created receipt=created "
            "route=started vip=skipped");
      std::map<std::string, CondJson> inputs;
      CHECK(drain_once(env.store, key, echo, &inputs) == std::vector<std::string>{"route"});
      CHECK(drain_once(env.store, key, echo, &inputs) == std::vector<std::string>{"card"});
      CHECK(drain_once(env.store, key, echo, &inputs) ==
            std::vector<std::string>{"notify", "receipt"});
      // A skipped dependency has no key in the input.
      CHECK(inputs["notify"] == CondJson{{"card", {{"by", "card"}}}});
      CHECK(drain_once(env.store, key, echo).empty());
      CHECK(flowreg::pgtest::step_states(env.store, run) ==
            "card=completed cash=skipped close=skipped notify=completed receipt=completed "
            "route=completed vip=skipped");
      // The completed leaves' outputs: close (a leaf) was skipped.
      CHECK(completed_output(env.store, run) == CondJson{{"notify", {{"by", "notify"}}}});
    }

    SUBCASE("bank, vip: both branches skipped, so is notify (no dependency completed)") {
      const auto run = flowreg::pgtest::start_one(env.store, key, {{"pay", "bank"}, {"vip", 1}});
      CHECK(drain_once(env.store, key, echo) == std::vector<std::string>{"route", "vip"});
      CHECK(drain_once(env.store, key, echo).empty());
      CHECK(flowreg::pgtest::step_states(env.store, run) ==
            "card=skipped cash=skipped close=skipped notify=skipped receipt=skipped "
            "route=completed vip=completed");
      CHECK(completed_output(env.store, run) == CondJson::object());
    }

    SUBCASE("card, vip: every step but cash runs, close on both") {
      const auto run =
          flowreg::pgtest::start_one(env.store, key, {{"pay", "card"}, {"vip", false}});
      std::map<std::string, CondJson> inputs;
      CHECK(drain_once(env.store, key, echo, &inputs) == std::vector<std::string>{"route", "vip"});
      CHECK(drain_once(env.store, key, echo, &inputs) == std::vector<std::string>{"card"});
      CHECK(drain_once(env.store, key, echo, &inputs) ==
            std::vector<std::string>{"notify", "receipt"});
      CHECK(drain_once(env.store, key, echo, &inputs) == std::vector<std::string>{"close"});
      CHECK(inputs["close"] ==
            CondJson{{"receipt", {{"by", "receipt"}}}, {"vip", {{"by", "vip"}}}});
      CHECK(flowreg::pgtest::step_states(env.store, run) ==
            "card=completed cash=skipped close=completed notify=completed receipt=completed "
            "route=completed vip=completed");
      CHECK(completed_output(env.store, run) ==
            CondJson{{"notify", {{"by", "notify"}}}, {"close", {{"by", "close"}}}});
    }

    SUBCASE("a voucher: the in list; a value of another type does not equal") {
      const auto run = flowreg::pgtest::start_one(env.store, key, {{"pay", "voucher"}});
      CHECK(drain_once(env.store, key, echo) == std::vector<std::string>{"route"});
      CHECK(drain_once(env.store, key, echo) == std::vector<std::string>{"cash"});
      CHECK(drain_once(env.store, key, echo) == std::vector<std::string>{"notify"});
      CHECK(flowreg::pgtest::step_states(env.store, run) ==
            "card=skipped cash=completed close=skipped notify=completed receipt=skipped "
            "route=completed vip=skipped");
      const auto other = flowreg::pgtest::start_one(env.store, key, {{"pay", CondJson::array()}});
      CHECK(drain_once(env.store, key, echo) == std::vector<std::string>{"route"});
      CHECK(drain_once(env.store, key, echo).empty());
      CHECK(flowreg::pgtest::step_states(env.store, other) ==
            "card=skipped cash=skipped close=skipped notify=skipped receipt=skipped "
            "route=completed vip=skipped");
    }
  }

  TEST_CASE("all, any, not; a one-step flow and a chain with a condition; retry keeps skips") {
    auto env = flowreg::pgtest::claim_env("cond_forms");
    // A one-step flow whose step has a condition: no one-row layout, the run completes either way.
    flowreg::FlowDef one;
    one.slug = "one";
    one.steps = {when_step("only", {},
                           CondJson{{"any",
                                     {{{"at", "/n"}, {"equals", 1.0}},
                                      {{"all",
                                        {{{"at", "/tags/0"}, {"equals", "x"}},
                                         {{"not", {{"at", "/off"}, {"exists", true}}}}}}}}}})};
    const auto one_key = flowreg::pgtest::store_at_shape(env.store, one);
    const auto echo = [](const std::string& slug, const CondJson&) {
      return CondJson{{"by", slug}};
    };
    const auto by_n = flowreg::pgtest::start_one(env.store, one_key, {{"n", 1}});
    const auto by_tag = flowreg::pgtest::start_one(env.store, one_key, {{"tags", {"x"}}});
    const auto off =
        flowreg::pgtest::start_one(env.store, one_key, {{"tags", {"x"}}, {"off", nullptr}});
    const auto none = flowreg::pgtest::start_one(env.store, one_key, {{"n", 2}});
    CHECK(drain_once(env.store, one_key, echo) == std::vector<std::string>{"only", "only"});
    CHECK(flowreg::pgtest::step_states(env.store, by_n) == "only=completed");
    CHECK(flowreg::pgtest::step_states(env.store, by_tag) == "only=completed");
    // exists is true even for a null.
    CHECK(flowreg::pgtest::step_states(env.store, off) == "only=skipped");
    CHECK(flowreg::pgtest::step_states(env.store, none) == "only=skipped");
    for (const auto& run : {off, none}) {
      CHECK(completed_output(env.store, run) == CondJson::object());
    }
    // A batch start (start_runs: by COPY for a one-step flow without a condition) too.
    const std::vector<CondJson> batch = {{{"n", 1}}, {{"n", 5}}};
    auto started = env.store.start_runs(one_key.slug, one_key.version, batch);
    REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
    REQUIRE(started->size() == 2);
    CHECK(drain_once(env.store, one_key, echo) == std::vector<std::string>{"only"});
    CHECK(flowreg::pgtest::step_states(env.store, (*started)[0]) == "only=completed");
    CHECK(flowreg::pgtest::step_states(env.store, (*started)[1]) == "only=skipped");
    CHECK(completed_output(env.store, (*started)[0]) == CondJson{{"only", {{"by", "only"}}}});
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT count(*) FROM flowreg.runs WHERE attempts IS NOT NULL "
                                     "OR chained OR status <> 'completed'") == "0");

    // A chain a -> b (when) -> c: no chain layout; c is skipped after b.
    flowreg::FlowDef chain;
    chain.slug = "chain";
    chain.steps = {when_step("a", {}, std::nullopt),
                   when_step("b", {"a"}, CondJson{{"at", "/a/go"}, {"equals", true}}),
                   when_step("c", {"b"}, std::nullopt)};
    const auto chain_key = flowreg::pgtest::store_at_shape(env.store, chain);
    const auto go = flowreg::pgtest::start_one(env.store, chain_key, CondJson::object());
    const auto stop = flowreg::pgtest::start_one(env.store, chain_key, CondJson::object());
    auto first = flowreg::pgtest::claim_some(env.store, {chain_key}, 10, "cond-test");
    REQUIRE(first.size() == 2);
    std::vector<fdr::Completion> done;
    for (const auto& t : first) done.push_back({t.id, t.attempt, CondJson{{"go", t.run_id == go}}});
    REQUIRE(env.store.complete(done).has_value());
    CHECK(drain_once(env.store, chain_key, echo) == std::vector<std::string>{"b"});
    CHECK(drain_once(env.store, chain_key, echo) == std::vector<std::string>{"c"});
    CHECK(flowreg::pgtest::step_states(env.store, go) == "a=completed b=completed c=completed");
    CHECK(flowreg::pgtest::step_states(env.store, stop) == "a=completed b=skipped c=skipped");

    // A failed run retried from its failed step: its skipped steps stay skipped, the failed one
    // runs again.
    flowreg::FlowDef fork;
    fork.slug = "fork";
    fork.steps = {when_step("a", {}, std::nullopt),
                  when_step("yes", {"a"}, CondJson{{"at", "/a/ok"}, {"equals", true}}),
                  when_step("no", {"a"}, CondJson{{"not", {{"at", "/a/ok"}, {"equals", true}}}}),
                  when_step("end", {"yes", "no"}, std::nullopt, flowreg::Trigger::any)};
    const auto fork_key = flowreg::pgtest::store_at_shape(env.store, fork);
    const auto failing = flowreg::pgtest::start_one(env.store, fork_key, CondJson::object());
    CHECK(drain_once(env.store, fork_key, [](const std::string&, const CondJson&) {
            return CondJson{{"ok", false}};
          }) == std::vector<std::string>{"a"});
    auto no = flowreg::pgtest::claim_some(env.store, {fork_key}, 10, "cond-test");
    REQUIRE(no.size() == 1);
    CHECK(no[0].step_slug == "no");
    const std::vector<fdr::Failure> failure = {{no[0].id, no[0].attempt, "boom", true}};
    auto failed = env.store.fail(failure);
    REQUIRE_MESSAGE(failed, flowreg::testing::failure_text(failed));
    CHECK(flowreg::pgtest::step_states(env.store, failing) ==
          "a=completed end=cancelled no=failed yes=skipped");
    auto retried = env.store.retry_run(failing, fdr::RetryFrom::failed_step);
    REQUIRE_MESSAGE(retried, flowreg::testing::failure_text(retried));
    CHECK(flowreg::pgtest::step_states(env.store, *retried) ==
          "a=completed end=created no=started yes=skipped");
    CHECK(drain_once(env.store, fork_key, echo) == std::vector<std::string>{"no"});
    CHECK(drain_once(env.store, fork_key, echo) == std::vector<std::string>{"end"});
    CHECK(completed_output(env.store, *retried) == CondJson{{"end", {{"by", "end"}}}});
  }

  TEST_CASE(
      "workers: each step runs exactly when its condition and trigger say, through SIGKILLs of "
      "a worker; runs show and flows show") {
    auto s = flowreg::pgtest::wchaos_scene("cond_workers");
    const auto flowreg = [&](std::vector<std::string> args) { return s.cli(std::move(args)); };
    std::optional<flowreg::test::Child> a(s.worker("a", {"--lease", "1s", "--concurrency", "4"}));
    auto b = s.worker("b", {"--lease", "1s", "--concurrency", "4"});
    s.wait_serving("a", "wchaos_branch");
    s.wait_serving("b", "wchaos_branch");
    const auto audit = s.dir / "audit";
    constexpr std::size_t kRuns = 40;
    const std::vector<std::string> pays = {"card", "cash", "voucher", "bank"};
    std::vector<fdr::RunId> runs;
    std::vector<std::set<std::string>> expected;
    for (std::size_t i = 0; i < kRuns; ++i) {
      const std::string pay = pays[i % 4];
      CondJson input{{"pay", pay}, {"customer", std::to_string(i)}, {"audit", audit.string()}};
      // vip: absent, false (not vip) or true, in turns of 3.
      if (i % 3 == 1) input["vip"] = false;
      if (i % 3 == 2) input["vip"] = true;
      runs.push_back(s.start("wchaos_branch", input));
      const bool card = pay == "card", cash = pay == "cash" || pay == "voucher", vip = i % 3 == 2;
      std::set<std::string> runs_steps{"route"};
      if (card) runs_steps.insert({"card", "receipt"});
      if (cash) runs_steps.insert("cash");
      if (card || cash) runs_steps.insert("notify");
      if (vip) runs_steps.insert("vip");
      if (card && vip) runs_steps.insert("close");
      expected.push_back(std::move(runs_steps));
      if (i % 10 == 9) {
        a->signal(SIGKILL);
        CHECK(a->wait(10s) == 128 + SIGKILL);
        a.emplace(s.worker("a", {"--lease", "1s", "--concurrency", "4"}));
      }
    }
    for (const auto& run : runs)
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 60s), s.err("b"));
    const std::set<std::string> all = {"route",  "card", "cash", "receipt",
                                       "notify", "vip",  "close"};
    std::map<std::string, std::set<std::string>> ran;  // run -> steps audited
    std::map<std::string, std::set<std::string>> attempts;
    std::ifstream in(audit);
    for (std::string what, customer, run, step, attempt, pid, at;
         in >> what >> customer >> run >> step >> attempt >> pid >> at;) {
      ran[run].insert(step);
      CHECK_MESSAGE(attempts[run + " " + step].insert(attempt).second, run << " " << step);
    }
    for (std::size_t i = 0; i < kRuns; ++i) {
      CAPTURE(i);
      CHECK(s.run_field(runs[i], "status") == "completed");
      CHECK(ran[runs[i]] == expected[i]);
      for (const auto& step : all) {
        CAPTURE(step);
        CHECK(flowreg::pgtest::query_one(
                  s.conninfo, "SELECT status FROM flowreg.step_states WHERE run_id = '" + runs[i] +
                                  "' AND step_slug = '" + step + "'") ==
              (expected[i].contains(step) ? "completed" : "skipped"));
      }
      // The output: the completed leaves' (notify, close).
      const auto output = CondJson::parse(s.run_field(runs[i], "output"));
      CHECK(output.contains("notify") == expected[i].contains("notify"));
      CHECK(output.contains("close") == expected[i].contains("close"));
    }
    const auto shown = flowreg({"runs", "show", runs[3]});  // bank: only route ran
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    CHECK(shown.out.find("skipped") != std::string::npos);
    const auto flow_text = flowreg({"flows", "show", "wchaos_branch"});
    REQUIRE_MESSAGE(flow_text.exit_code == 0, flow_text.err);
    CHECK(flow_text.out.find("when /route/pay in [\"cash\",\"voucher\"]") != std::string::npos);
    CHECK(flow_text.out.find("(trigger any)") != std::string::npos);
    CHECK(flow_text.out.find("when /vip exists and not (/vip equals false)") != std::string::npos);
    for (auto* w : {&*a, &b}) {
      w->signal(SIGTERM);
      CHECK(w->wait(30s) == 0);
    }
  }
}
