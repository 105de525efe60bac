// Child flows (migration 0028, docs/flows.md#child-flows). Claims through RunStore on the shared
// cluster: a flow step starts one child run (its id after its parent's, linked both ways) and
// holds no task while it runs; the child's end comes back as a task of the parent's step, whose
// completion gives the step the child's output; a map over a child flow starts one child per
// element, its output theirs in order ([] for an empty array); a child flow not stored and a
// cycle of flows (stopped at depth 8) fail the run with their reason; a cancel cascades to
// children and grandchildren, and a child cancelled alone hands its end back. Then real `flowreg
// worker` processes run families of child runs while one of them is SIGKILLed: every run
// completes with its children's outputs in order, each child once per element; a child that
// fails fails its parent (whose other children are cancelled); `runs cancel` of a parent cancels
// its waiting child; `runs show` links both ways.
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "pg/claim_env.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdr = flowreg::detail;
using KidJson = nlohmann::json;
using namespace std::chrono_literals;

flowreg::StepDef flow_step(const std::string& slug, std::vector<std::string> deps,
                           const std::string& child, bool map = false) {
  auto s = flowreg::pgtest::step(slug, std::move(deps));
  s.kind = flowreg::StepKind::flow;
  s.handler.clear();
  s.child = flowreg::Child{child, map};
  return s;
}

// Claims the tasks of `key` ready now and completes each with `output(task)`; the tasks claimed.
std::vector<fdr::ClaimedTask> drain_family(
    fdr::RunStore& store, const fdr::FlowKey& key,
    const std::function<KidJson(const fdr::ClaimedTask&)>& output) {
  auto claimed = flowreg::pgtest::claim_some(store, {key}, 100, "child-test");
  std::vector<fdr::Completion> done;
  for (const auto& t : claimed) done.push_back({t.id, t.attempt, output(t)});
  auto rejected = store.complete(done);
  REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
  CHECK(rejected->empty());
  return claimed;
}

// What a worker's child_handler does with a child's end handed back: its output.
KidJson handed_output(const fdr::ClaimedTask& t) {
  REQUIRE(t.input.value("status", "") == "completed");
  return t.input["output"];
}

fdr::RunInfo family_run(fdr::RunStore& store, const fdr::RunId& run) {
  auto got = store.get_run(run);
  REQUIRE_MESSAGE(got, flowreg::testing::failure_text(got));
  REQUIRE(got->has_value());
  return **got;
}

}  // namespace

TEST_SUITE("child_flows") {
  TEST_CASE("a flow step: its child run, the end handed back, a map over a child flow") {
    auto env = flowreg::pgtest::claim_env("child_store");
    // The child: a one-step flow (its runs get the one-row layout).
    flowreg::FlowDef kid;
    kid.slug = "kid";
    kid.steps = {flowreg::pgtest::step("k")};
    const auto kid_key = flowreg::pgtest::store_at_shape(env.store, kid);
    const auto by_input = [](const fdr::ClaimedTask& t) { return KidJson{{"got", t.input}}; };

    SUBCASE("one child: linked both ways, no task held, its output the step's") {
      flowreg::FlowDef parent;
      parent.slug = "parent";
      parent.steps = {flow_step("c", {}, "kid"), flowreg::pgtest::step("after", {"c"})};
      const auto key = flowreg::pgtest::store_at_shape(env.store, parent);
      const auto run = flowreg::pgtest::start_one(env.store, key, {{"x", 1}});
      CHECK(flowreg::pgtest::step_states(env.store, run) == "after=created c=started");
      // Its child: started with the step's input, its id after its parent's.
      const auto child = flowreg::pgtest::query_one(
          env.conninfo, "SELECT id FROM flowreg.runs WHERE parent_run_id = '" + run +
                            "' AND parent_step = 'c' AND parent_index = 0 AND depth = 1");
      CHECK(child > run);
      // The parent's step holds no task while its child runs.
      CHECK(flowreg::pgtest::claim_some(env.store, {key}, 10, "child-test").empty());
      const auto ran = drain_family(env.store, kid_key, by_input);
      REQUIRE(ran.size() == 1);
      CHECK(ran[0].input == KidJson{{"x", 1}});
      // The child's end, handed back as a task of step c.
      const auto back = drain_family(env.store, key, handed_output);
      REQUIRE(back.size() == 1);
      CHECK(back[0].step_slug == "c");
      CHECK(back[0].input["run"] == child);
      CHECK(back[0].input["flow"] == "kid");
      CHECK(back[0].input["output"] == KidJson{{"k", {{"got", {{"x", 1}}}}}});
      // c completed with its child's output; after reads it.
      const auto after = drain_family(env.store, key, by_input);
      REQUIRE(after.size() == 1);
      CHECK(after[0].input == KidJson{{"c", {{"k", {{"got", {{"x", 1}}}}}}}});
      CHECK(family_run(env.store, run).status == fdr::RunStatus::completed);
      // Linked both ways (get_run: `runs show`, the API and the run page).
      const auto p = family_run(env.store, run);
      REQUIRE(p.children.size() == 1);
      CHECK(p.children[0].id == child);
      CHECK(p.children[0].step == "c");
      CHECK(p.children[0].status == fdr::RunStatus::completed);
      CHECK(p.children_total == 1);
      const auto c = family_run(env.store, child);
      REQUIRE(c.parent.has_value());
      CHECK(c.parent->run == run);
      CHECK(c.parent->step == "c");
      CHECK(c.parent->index == 0);
      CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");
    }

    SUBCASE("a map over a child flow: one child per element, the outputs in order") {
      flowreg::FlowDef fan;
      fan.slug = "fan";
      fan.steps = {flowreg::pgtest::step("split"), flow_step("each", {"split"}, "kid", true)};
      const auto key = flowreg::pgtest::store_at_shape(env.store, fan);
      const auto run = flowreg::pgtest::start_one(env.store, key, KidJson::object());
      const auto empty = flowreg::pgtest::start_one(env.store, key, KidJson::object());
      const auto object = flowreg::pgtest::start_one(env.store, key, KidJson::object());
      drain_family(env.store, key, [&](const fdr::ClaimedTask& t) {
        return t.run_id == run     ? KidJson::array({{{"a", 1}}, {{"a", 2}}, {{"a", 3}}})
               : t.run_id == empty ? KidJson::array()
                                   : KidJson{{"not", "an array"}};
      });
      CHECK(flowreg::pgtest::query_one(
                env.conninfo,
                "SELECT string_agg(parent_index::text, ',' ORDER BY parent_index) || ' ' || "
                "bool_and(id > parent_run_id) FROM flowreg.runs WHERE parent_run_id = '" +
                    run + "'") == "0,1,2 true");
      // An empty array: completed at once with []; not an array: the run fails.
      CHECK(family_run(env.store, empty).output == KidJson{{"each", KidJson::array()}});
      const auto refused = family_run(env.store, object);
      CHECK(refused.status == fdr::RunStatus::failed);
      CHECK(refused.error.value_or("").find("is a map step but its input is an object") !=
            std::string::npos);
      // The children end in any order; their outputs come in element order.
      auto kids = flowreg::pgtest::claim_some(env.store, {kid_key}, 10, "child-test");
      REQUIRE(kids.size() == 3);
      std::sort(kids.begin(), kids.end(),
                [](const auto& a, const auto& b) { return a.input["a"] > b.input["a"]; });
      for (const auto& t : kids) {
        const std::vector<fdr::Completion> one = {{t.id, t.attempt, KidJson{{"i", t.input["a"]}}}};
        REQUIRE(env.store.complete(one).has_value());
      }
      CHECK(drain_family(env.store, key, handed_output).size() == 3);
      CHECK(family_run(env.store, run).output ==
            KidJson{{"each", {{{"k", {{"i", 1}}}}, {{"k", {{"i", 2}}}}, {{"k", {{"i", 3}}}}}}});
      CHECK(family_run(env.store, run).children_total == 3);
    }

    SUBCASE("a child flow not stored, and a cycle of flows stopped 8 deep, fail the run") {
      flowreg::FlowDef lost;
      lost.slug = "lost";
      lost.steps = {flow_step("c", {}, "nowhere")};
      const auto lost_key = flowreg::pgtest::store_at_shape(env.store, lost);
      const auto run = flowreg::pgtest::start_one(env.store, lost_key, KidJson::object());
      const auto failed = family_run(env.store, run);
      CHECK(failed.status == fdr::RunStatus::failed);
      CHECK(failed.error.value_or("").find("flow 'nowhere', which is not stored") !=
            std::string::npos);
      // A flow that starts itself (validation refuses it when declared; stored here directly).
      flowreg::FlowDef loop;
      loop.slug = "loop";
      loop.steps = {flow_step("again", {}, "loop")};
      const auto loop_key = flowreg::pgtest::store_at_shape(env.store, loop);
      flowreg::pgtest::start_one(env.store, loop_key, KidJson::object());
      CHECK(flowreg::pgtest::query_one(env.conninfo,
                                       "SELECT count(*) || ' ' || max(depth) FROM flowreg.runs "
                                       "WHERE flow_slug = 'loop'") == "9 8");
      const auto deepest = flowreg::pgtest::query_one(
          env.conninfo, "SELECT status || ': ' || error FROM flowreg.runs WHERE depth = 8");
      CHECK(deepest.find("failed: step 'again' would start a run of flow 'loop' nested 9 deep") ==
            0);
      // Its end is handed to its parent, which fails in turn when a worker takes it.
      CHECK(flowreg::pgtest::query_one(
                env.conninfo,
                "SELECT t.input->>'status' FROM flowreg.tasks t JOIN flowreg.runs r "
                "ON r.id = t.run_id WHERE r.depth = 7") == "failed");
    }

    SUBCASE("a cancel cascades to children and grandchildren; a child cancelled alone") {
      // grand -> holder -> waiter (a wait for a signal: it holds no task).
      flowreg::FlowDef waiter;
      waiter.slug = "waiter";
      auto wait = flowreg::pgtest::step("w");
      wait.kind = flowreg::StepKind::wait;
      wait.handler.clear();
      wait.wait = flowreg::Wait{};
      wait.wait->signal = "go";
      waiter.steps = {wait};
      flowreg::pgtest::store_at_shape(env.store, waiter);
      flowreg::FlowDef holder;
      holder.slug = "holder";
      holder.steps = {flow_step("hold", {}, "waiter")};
      const auto holder_key = flowreg::pgtest::store_at_shape(env.store, holder);
      flowreg::FlowDef grand;
      grand.slug = "grand";
      grand.steps = {flow_step("down", {}, "holder")};
      const auto grand_key = flowreg::pgtest::store_at_shape(env.store, grand);
      const auto top = flowreg::pgtest::start_one(env.store, grand_key, KidJson::object());
      const auto family =
          "SELECT string_agg(flow_slug || '=' || status, ' ' ORDER BY coalesce(depth, 0)) "
          "FROM flowreg.runs WHERE flow_slug IN ('grand', 'holder', 'waiter')";
      CHECK(flowreg::pgtest::query_one(env.conninfo, family) ==
            "grand=started holder=started waiter=started");
      auto cancelled = env.store.cancel_run(top);
      REQUIRE_MESSAGE(cancelled, flowreg::testing::failure_text(cancelled));
      CHECK(*cancelled);
      CHECK(flowreg::pgtest::query_one(env.conninfo, family) ==
            "grand=cancelled holder=cancelled waiter=cancelled");
      CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT count(*) FROM flowreg.tasks") == "0");

      // A child cancelled alone: its parent's step gets its end, and fails with it.
      const auto alone = flowreg::pgtest::start_one(env.store, holder_key, KidJson::object());
      const auto child = flowreg::pgtest::query_one(
          env.conninfo, "SELECT id FROM flowreg.runs WHERE parent_run_id = '" + alone + "'");
      REQUIRE(env.store.cancel_run(child).value_or(false));
      auto back = flowreg::pgtest::claim_some(env.store, {holder_key}, 10, "child-test");
      REQUIRE(back.size() == 1);
      CHECK(back[0].input["status"] == "cancelled");
      CHECK(back[0].input["run"] == child);
      CHECK(family_run(env.store, alone).status == fdr::RunStatus::started);
    }
  }

  TEST_CASE(
      "workers: families of child runs through SIGKILLs of a worker; a failing child; a cancel "
      "cascade; runs show links both ways") {
    auto s = flowreg::pgtest::wchaos_scene("child_workers");
    std::optional<flowreg::test::Child> a(s.worker("a", {"--lease", "1s", "--concurrency", "4"}));
    auto b = s.worker("b", {"--lease", "1s", "--concurrency", "4"});
    s.wait_serving("a", "wchaos_family");
    s.wait_serving("b", "wchaos_family");
    const auto audit = s.dir / "audit";
    constexpr std::size_t kRuns = 12;
    std::vector<fdr::RunId> runs;
    for (std::size_t i = 0; i < kRuns; ++i) {
      KidJson items = KidJson::array();
      for (int k = 0; k < 3; ++k)
        items.push_back({{"customer", fmt::format("r{}k{}", i, k)}, {"n", k}, {"audit", audit}});
      runs.push_back(
          s.start("wchaos_family",
                  {{"items", items}, {"customer", fmt::format("r{}solo", i)}, {"audit", audit}}));
      if (i % 4 == 3) {
        a->signal(SIGKILL);
        CHECK(a->wait(10s) == 128 + SIGKILL);
        a.emplace(s.worker("a", {"--lease", "1s", "--concurrency", "4"}));
      }
    }
    for (const auto& run : runs)
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 90s), s.err("b"));
    for (std::size_t i = 0; i < kRuns; ++i) {
      CAPTURE(i);
      REQUIRE(s.run_field(runs[i], "status") == "completed");
      const auto output = KidJson::parse(s.run_field(runs[i], "output"));
      const auto kid_output = [](const std::string& who, int n) {
        return KidJson{{"work", {{"kid", who}, {"n", n}}}};
      };
      const KidJson kids = KidJson::array({kid_output(fmt::format("r{}k0", i), 0),
                                           kid_output(fmt::format("r{}k1", i), 1),
                                           kid_output(fmt::format("r{}k2", i), 2)});
      const KidJson expected = {
          {"gather", {{"kids", kids}, {"solo", kid_output(fmt::format("r{}solo", i), 0)}}}};
      CHECK(output == expected);
      // One child per element and one for solo, each completed.
      CHECK(
          flowreg::pgtest::query_one(s.conninfo,
                                     "SELECT count(*) || ' ' || count(DISTINCT (parent_step, "
                                     "parent_index)) || ' ' || bool_and(status = 'completed') FROM "
                                     "flowreg.runs WHERE parent_run_id = '" +
                                         runs[i] + "'") == "4 4 true");
    }

    // A child that fails: its parent's step fails with its error, the run too.
    const auto failing = s.start(
        "wchaos_family",
        {{"items", {{{"customer", "ok"}, {"audit", audit}}, {{"fail", true}, {"audit", audit}}}},
         {"customer", "solo"},
         {"audit", audit}});
    REQUIRE(flowreg::pgtest::eventually([&] { return s.ended(failing); }, 60s));
    CHECK(s.run_field(failing, "status") == "failed");
    const auto error = s.run_field(failing, "error");
    CHECK_MESSAGE(error.find("step 'kids' task 1 failed permanently") != std::string::npos, error);
    CHECK_MESSAGE(error.find("of flow 'wchaos_kid' failed: step 'work' failed permanently") !=
                      std::string::npos,
                  error);

    // A parent cancelled while its child waits for a signal: the child is cancelled too.
    const auto guardian = s.start("wchaos_guardian", {{"n", 1}});
    std::string child;
    REQUIRE(flowreg::pgtest::eventually(
        [&] {
          child = flowreg::pgtest::query_one_or_empty(
              s.conninfo, "SELECT id FROM flowreg.runs WHERE parent_run_id = '" + guardian +
                              "' AND status = 'started' AND EXISTS (SELECT FROM "
                              "flowreg.step_states w WHERE w.run_id = runs.id AND w.step_slug = "
                              "'approve' AND w.status = 'started')");
          return !child.empty();
        },
        60s));
    const auto shown = s.cli({"runs", "show", guardian});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    CHECK(shown.out.find("child: run " + child +
                         "  flow=wchaos_approval  started  step child[0]") != std::string::npos);
    const auto child_shown = s.cli({"runs", "show", child});
    REQUIRE_MESSAGE(child_shown.exit_code == 0, child_shown.err);
    CHECK(child_shown.out.find("parent: run " + guardian + "  step child[0]") != std::string::npos);
    const auto as_json = s.cli({"runs", "show", "--json", guardian});
    REQUIRE_MESSAGE(as_json.exit_code == 0, as_json.err);
    CHECK(KidJson::parse(as_json.out)["children"][0]["id"] == child);
    const auto cancel = s.cli({"runs", "cancel", guardian});
    REQUIRE_MESSAGE(cancel.exit_code == 0, cancel.err);
    CHECK(s.run_field(child, "status") == "cancelled");
    const auto flow_text = s.cli({"flows", "show", "wchaos_family"});
    REQUIRE_MESSAGE(flow_text.exit_code == 0, flow_text.err);
    CHECK(flow_text.out.find("starts flow wchaos_kid per element") != std::string::npos);
    for (auto* w : {&*a, &b}) {
      w->signal(SIGTERM);
      CHECK(w->wait(30s) == 0);
    }
  }
}
