// Durable waiting (migrations 0025, 0026): sleep steps, snoozed tasks, wait steps on signals and
// events. Claims through RunStore on the
// shared cluster: a sleep step's task is created queued for the end of its sleep (a duration, or
// the RFC 3339 time at a pointer into its input), so no claim takes it before, and a run whose
// input has no such time fails with a message naming the step and the pointer; a snoozed task is
// queued again for later without spending its attempt. Then real `flowreg worker` processes: 20
// runs of a flow with a 2 s sleep between two steps, one worker SIGKILLed while they sleep, each
// run's sleep lasting its 2 s and no less; a handler (in a handler process) snoozing 3 times
// before it completes on its one attempt; and the CLI (flows show, runs show while a run sleeps).
#include <doctest/doctest.h>
#include <fmt/chrono.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "app/forms.hpp"
#include "cluster/embedded_cluster.hpp"
#include "pg/claim_env.hpp"
#include "pg/pg_fixture.hpp"
#include "pg/worker_scene.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace {

namespace fdr = flowreg::detail;
using WaitJson = nlohmann::json;
using namespace std::chrono_literals;

flowreg::StepDef wait_sleep_step(const std::string& slug, std::vector<std::string> deps,
                                 flowreg::Sleep sleep) {
  flowreg::StepDef s;
  s.slug = slug;
  s.kind = flowreg::StepKind::sleep;
  s.depends_on = std::move(deps);
  s.sleep = std::move(sleep);
  return s;
}

flowreg::StepDef wait_step(const std::string& slug, std::vector<std::string> deps,
                           flowreg::Wait wait) {
  flowreg::StepDef s;
  s.slug = slug;
  s.kind = flowreg::StepKind::wait;
  s.depends_on = std::move(deps);
  s.wait = std::move(wait);
  return s;
}

flowreg::Wait on_signal(const std::string& name) {
  flowreg::Wait w;
  w.signal = name;
  return w;
}

// The step `slug` of `run` as run_steps reads it.
fdr::StepInfo wait_step_of(fdr::RunStore& store, const fdr::RunId& run, const std::string& slug) {
  auto steps = store.run_steps(run);
  REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
  for (const auto& s : *steps)
    if (s.slug == slug) return s;
  FAIL("no step " << slug);
  return {};
}

}  // namespace

TEST_SUITE("waits") {
  TEST_CASE("a sleep step's task is claimable only when its sleep ends; then its run goes on") {
    auto env = flowreg::pgtest::claim_env("wait_sleep");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "remind";
    flow.steps = {step("order"), wait_sleep_step("nap", {"order"}, {flowreg::Millis{3600000}, {}}),
                  step("remind", {"nap"})};
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    const auto run = flowreg::pgtest::start_one(env.store, key, {{"n", 1}});
    auto first = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(first.size() == 1);
    CHECK(first[0].step_slug == "order");
    flowreg::pgtest::complete_all(env.store, first);

    // Asleep: its task is queued for an hour from now, no claim takes it, and a worker's call is
    // told when it is due (not left to its poll).
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test").empty());
    CHECK(flowreg::pgtest::query_one(
              env.conninfo,
              "SELECT count(*) FROM flowreg.tasks WHERE step_slug = 'nap' AND status = 'queued' "
              "AND attempt = 0 AND available_at BETWEEN now() + interval '59 min' AND now() + "
              "interval '61 min'") == "1");
    auto worked = env.store.work("wait-test", {}, {}, std::span(&key, 1), 10, std::nullopt);
    REQUIRE_MESSAGE(worked, flowreg::testing::failure_text(worked));
    CHECK(worked->claimed.empty());
    REQUIRE(worked->next_due_in.has_value());
    CHECK(*worked->next_due_in > 3500s);
    const auto asleep = wait_step_of(env.store, run, "nap");
    CHECK(asleep.kind == "sleep");
    CHECK(asleep.status == "started");
    REQUIRE(asleep.waits_until.has_value());
    CHECK(*asleep.waits_until > std::chrono::system_clock::now() + 3500s);
    CHECK(flowreg::app::step_wait_text(asleep).starts_with("sleeping until "));
    CHECK(flowreg::app::step_json(asleep)["waits_until"].is_string());

    // Its hour passes (moved by hand): the next claim takes it; its completion starts "remind".
    flowreg::pgtest::query_one(env.conninfo,
                               "UPDATE flowreg.tasks SET available_at = now() WHERE step_slug = "
                               "'nap' RETURNING 1");
    auto woke = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(woke.size() == 1);
    CHECK(woke[0].step_slug == "nap");
    flowreg::pgtest::complete_all(env.store, woke);
    auto last = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(last.size() == 1);
    CHECK(last[0].step_slug == "remind");
    CHECK(last[0].input == WaitJson{{"nap", 1}});
    flowreg::pgtest::complete_all(env.store, last);
    auto ended = env.store.get_run(run).value();
    REQUIRE(ended.has_value());
    CHECK(ended->status == fdr::RunStatus::completed);
  }

  TEST_CASE(
      "a sleep until a time in the input: the time read, a past time at once, a bad one "
      "fails the run") {
    auto env = flowreg::pgtest::claim_env("wait_until");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "until";
    flow.steps = {wait_sleep_step("wait", {}, {std::nullopt, std::string("/at")}),
                  step("after", {"wait"})};
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    const auto later = flowreg::pgtest::start_one(env.store, key, {{"at", "2099-01-02T03:04:05Z"}});
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT available_at = '2099-01-02T03:04:05Z' FROM "
                                     "flowreg.tasks WHERE run_id = '" +
                                         later + "'") == "t");
    const auto past =
        flowreg::pgtest::start_one(env.store, key, {{"at", "2020-01-02 03:04:05.250+02:00"}});
    auto due = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(due.size() == 1);
    CHECK(due[0].run_id == past);
    CHECK(due[0].step_slug == "wait");

    // What is not an RFC 3339 time (PostgreSQL's casts would take 'tomorrow' or a bare date)
    // fails the run at once, naming the step, the pointer and what it found.
    for (const WaitJson& bad : {WaitJson("tomorrow"), WaitJson("2026-11-28"), WaitJson(17),
                                WaitJson("2026-02-30T00:00:00Z"), WaitJson(nullptr)}) {
      CAPTURE(bad.dump());
      WaitJson input = WaitJson::object();
      if (!bad.is_null()) input["at"] = bad;
      const auto run = flowreg::pgtest::start_one(env.store, key, input);
      auto info = env.store.get_run(run).value();
      REQUIRE(info.has_value());
      CHECK(info->status == fdr::RunStatus::failed);
      REQUIRE(info->error.has_value());
      CHECK(info->error->find("step 'wait' sleeps until the time at '/at' of its input") !=
            std::string::npos);
      CHECK(info->error->find(bad.is_null() ? "it has nothing there" : "it has " + bad.dump()) !=
            std::string::npos);
    }
    // The pointer is named as written, its keys escaped again ("a/b" as a~1b).
    flowreg::FlowDef escaped;
    escaped.slug = "until_escaped";
    escaped.steps = {wait_sleep_step("wait", {}, {std::nullopt, std::string("/a~1b")}),
                     step("after", {"wait"})};
    const auto escaped_key = flowreg::pgtest::store_at_shape(env.store, escaped);
    const auto odd = flowreg::pgtest::start_one(env.store, escaped_key, {{"a/b", "soon"}});
    CHECK(env.store.get_run(odd).value()->error.value_or("").find(
              "sleeps until the time at '/a~1b' of its input, but it has \"soon\" there") !=
          std::string::npos);
    // One bad time among the runs of one start fails that run only.
    const std::vector<WaitJson> batch = {
        {{"at", "2099-01-01T00:00:00Z"}}, {{"at", "soon"}}, {{"at", "2099-01-01T00:00:00+01:00"}}};
    auto started = env.store.start_runs(key.slug, key.version, batch);
    REQUIRE_MESSAGE(started, flowreg::testing::failure_text(started));
    REQUIRE(started->size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
      auto info = env.store.get_run((*started)[i]).value();
      REQUIRE(info.has_value());
      CHECK(info->status == (i == 1 ? fdr::RunStatus::failed : fdr::RunStatus::started));
    }
  }

  TEST_CASE("a snoozed task is queued again for later without spending its attempt") {
    auto env = flowreg::pgtest::claim_env("wait_snooze");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "poll";
    flow.options.max_attempts = 1;
    flow.steps = {step("check"), step("next", {"check"})};
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    const auto run = flowreg::pgtest::start_one(env.store, key, {{"n", 1}});
    for (int round = 1; round <= 3; ++round) {
      CAPTURE(round);
      auto claimed = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
      REQUIRE(claimed.size() == 1);
      CHECK(claimed[0].attempt == 1);  // never more: a snooze gives its attempt back
      fdr::Failure snoozed{claimed[0].id, claimed[0].attempt, {}, false};
      snoozed.snooze = flowreg::Millis{3600000};
      auto rejected = env.store.fail(std::span(&snoozed, 1));
      REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
      CHECK(rejected->empty());
      CHECK(flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test").empty());
      const auto s = wait_step_of(env.store, run, "check");
      CHECK(s.snoozes == round);
      CHECK(s.attempts == 0);
      REQUIRE(s.waits_until.has_value());
      CHECK(*s.waits_until > std::chrono::system_clock::now() + 3500s);
      CHECK(flowreg::app::step_wait_text(s).starts_with("snoozed (" + std::to_string(round) +
                                                        "x) until "));
      flowreg::pgtest::query_one(env.conninfo,
                                 "UPDATE flowreg.tasks SET available_at = now() RETURNING 1");
    }
    // No attempt was kept (nothing failed), and the run goes on.
    CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT count(*) FROM flowreg.task_attempts") ==
          "0");
    auto last = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(last.size() == 1);
    flowreg::pgtest::complete_all(env.store, last);
    auto next = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(next.size() == 1);
    CHECK(next[0].step_slug == "next");
    // A stale snooze (its attempt no longer current) is rejected like any stale result.
    fdr::Failure stale{last[0].id, last[0].attempt, {}, false};
    stale.snooze = flowreg::Millis{10};
    auto rejected = env.store.fail(std::span(&stale, 1));
    REQUIRE(rejected);
    CHECK(*rejected == std::vector<fdr::TaskId>{last[0].id});
  }

  TEST_CASE("a signal ends its run's wait step; one sent before the wait is kept; refusals") {
    auto env = flowreg::pgtest::claim_env("wait_signal");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "approval";
    flow.steps = {step("order"), wait_step("approve", {"order"}, on_signal("approve")),
                  step("ship", {"approve"})};
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    const auto waiting = flowreg::pgtest::start_one(env.store, key, {{"n", 1}});
    const auto early = flowreg::pgtest::start_one(env.store, key, {{"n", 2}});

    // Sent before its wait step starts: kept, then consumed when it starts.
    auto kept = env.store.send_signal(early, "approve", {{"ok", "early"}});
    REQUIRE_MESSAGE(kept, flowreg::testing::failure_text(kept));
    CHECK(kept->outcome == "kept");
    auto orders = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(orders.size() == 2);
    flowreg::pgtest::complete_all(env.store, orders);
    // The early run went on at once: its ship task is claimable, its wait's output the data.
    auto shipped = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(shipped.size() == 1);
    CHECK(shipped[0].run_id == early);
    CHECK(shipped[0].input == WaitJson{{"approve", {{"ok", "early"}}}});

    // The other waits: no task, no claim; runs show says what for.
    CHECK(flowreg::pgtest::query_one(
              env.conninfo,
              "SELECT count(*) FROM flowreg.tasks WHERE run_id = '" + waiting + "'") == "0");
    const auto w = wait_step_of(env.store, waiting, "approve");
    CHECK(w.status == "started");
    CHECK(flowreg::app::step_wait_text(w) == "waiting for signal 'approve'");
    CHECK(flowreg::app::step_json(w)["waits_for"] == WaitJson{{"signal", "approve"}});

    // A name its flow does not wait for: refused, naming what it waits for; nothing written.
    auto unknown = env.store.send_signal(waiting, "aprove", {});
    REQUIRE(!unknown);
    CHECK(unknown.error().code == flowreg::Errc::invalid_argument);
    CHECK(unknown.error().message.find("waits for no signal 'aprove': it waits for 'approve'") !=
          std::string::npos);
    // Delivered with a key; the same key again is a duplicate of it; another send is refused.
    auto sent = env.store.send_signal(waiting, "approve", {{"ok", true}}, std::string("k1"));
    REQUIRE_MESSAGE(sent, flowreg::testing::failure_text(sent));
    CHECK(sent->outcome == "delivered");
    auto again = env.store.send_signal(waiting, "approve", {{"ok", false}}, std::string("k1"));
    REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
    CHECK(again->outcome == "duplicate");
    CHECK(again->id == sent->id);
    auto twice = env.store.send_signal(waiting, "approve", {{"ok", false}});
    REQUIRE(!twice);
    CHECK(twice.error().message.find("already got signal 'approve'") != std::string::npos);
    CHECK(wait_step_of(env.store, waiting, "approve").output == WaitJson{{"ok", true}});
    auto next = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(next.size() == 1);
    CHECK(next[0].run_id == waiting);
    CHECK(next[0].input == WaitJson{{"approve", {{"ok", true}}}});
    flowreg::pgtest::complete_all(env.store, next);
    flowreg::pgtest::complete_all(env.store, shipped);
    // Ended runs take no signal; a run that does not exist is not found.
    auto ended = env.store.send_signal(waiting, "approve", {}, std::string("k2"));
    REQUIRE(!ended);
    CHECK(ended.error().message.find("has ended (completed)") != std::string::npos);
    auto none = env.store.send_signal("00000000-0000-0000-0000-000000000000", "approve", {});
    REQUIRE(!none);
    CHECK(none.error().code == flowreg::Errc::not_found);
    CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT count(*) FROM flowreg.signals") == "2");
  }

  TEST_CASE("an event resumes exactly the runs waiting for its values, once; a timeout's task") {
    auto env = flowreg::pgtest::claim_env("wait_event");
    using flowreg::pgtest::step;
    flowreg::FlowDef flow;
    flow.slug = "paid";
    flowreg::Wait paid;
    paid.event = "paid";
    paid.match = {{"/order", "/order/id"}, {"/shop", "/shop"}};
    paid.timeout = flowreg::Millis{3600000};
    flow.steps = {wait_step("paid", {}, paid), step("ship", {"paid"})};
    const auto key = flowreg::pgtest::store_at_shape(env.store, flow);
    std::vector<fdr::RunId> runs;
    for (int i = 0; i < 6; ++i)
      runs.push_back(flowreg::pgtest::start_one(
          env.store, key, {{"order", {{"id", i % 3}}}, {"shop", i < 3 ? "a" : "b"}}));
    // A run whose input has no value where its match reads one fails, naming the pointer.
    const auto missing = flowreg::pgtest::start_one(env.store, key, {{"shop", "a"}});
    auto failed = env.store.get_run(missing).value();
    REQUIRE(failed.has_value());
    CHECK(failed->status == fdr::RunStatus::failed);
    CHECK(failed->error.value_or("").find("its input has nothing at /order/id") !=
          std::string::npos);
    // Each waits under its key, with one task: its timeout's, an hour ahead.
    CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT count(*) FROM flowreg.event_waits") ==
          "6");
    CHECK(flowreg::pgtest::query_one(
              env.conninfo,
              "SELECT count(*) FROM flowreg.tasks WHERE step_slug = 'paid' AND available_at > "
              "now() + interval '59 min'") == "6");
    CHECK(flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test").empty());
    const auto w = wait_step_of(env.store, runs[1], "paid");
    CHECK(flowreg::app::step_wait_text(w).starts_with(
        "waiting for event 'paid' where /order = 1 and /shop = \"a\", times out at "));

    // Order 1 of shop a: run 1 only (run 4 is shop b's); numbers compare as JSON.
    auto sent = env.store.send_event("paid", {{"order", 1}, {"shop", "a"}, {"sum", 5}});
    REQUIRE_MESSAGE(sent, flowreg::testing::failure_text(sent));
    CHECK(sent->resumed == 1);
    CHECK(!sent->duplicate);
    auto ship = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(ship.size() == 1);
    CHECK(ship[0].run_id == runs[1]);
    CHECK(ship[0].input["paid"]["sum"] == 5);
    // Sent again: nothing waits for it any more. Other values, or a value missing: none.
    CHECK(env.store.send_event("paid", {{"order", 1}, {"shop", "a"}}).value().resumed == 0);
    CHECK(env.store.send_event("paid", {{"order", 7}, {"shop", "a"}}).value().resumed == 0);
    CHECK(env.store.send_event("paid", {{"shop", "a"}}).value().resumed == 0);
    CHECK(env.store.send_event("other", {{"order", 0}, {"shop", "a"}}).value().resumed == 0);
    // Order 0 of shop b (run 3), with a key: the same key again resumes nothing more.
    auto keyed = env.store.send_event("paid", {{"order", 0}, {"shop", "b"}}, std::string("e1"));
    REQUIRE(keyed);
    CHECK(keyed->resumed == 1);
    auto dup = env.store.send_event("paid", {{"order", 2}, {"shop", "b"}}, std::string("e1"));
    REQUIRE(dup);
    CHECK(dup->duplicate);
    CHECK(dup->id == keyed->id);
    CHECK(dup->resumed == 1);
    CHECK(wait_step_of(env.store, runs[5], "paid").status == "started");
    // Their timeouts' tasks left with them; the others still wait.
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT count(*) FROM flowreg.tasks WHERE step_slug = "
                                     "'paid'") == "4");
    CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT count(*) FROM flowreg.event_waits") ==
          "4");
    // A cancelled run stops waiting.
    REQUIRE(env.store.cancel_run(runs[0]).value());
    CHECK(flowreg::pgtest::query_one(env.conninfo, "SELECT count(*) FROM flowreg.event_waits") ==
          "3");
    CHECK(env.store.send_event("paid", {{"order", 0}, {"shop", "a"}}).value().resumed == 0);
    // A timeout's task, once due, is claimed (the worker then ends the step: wait_handler).
    flowreg::pgtest::query_one(
        env.conninfo, "UPDATE flowreg.tasks SET available_at = now() WHERE run_id = '" + runs[2] +
                          "' RETURNING 1");
    auto due = flowreg::pgtest::claim_some(env.store, {key}, 10, "wait-test");
    REQUIRE(due.size() == 2);  // ship of run 3, the timeout of run 2
    // An event that comes while the timeout's task is claimed still wins: the task's result is
    // rejected.
    CHECK(env.store.send_event("paid", {{"order", 2}, {"shop", "a"}}).value().resumed == 1);
    for (const auto& t : due)
      if (t.run_id == runs[2]) {
        fdr::Failure late{t.id, t.attempt, "timed out", true};
        auto rejected = env.store.fail(std::span(&late, 1));
        REQUIRE(rejected);
        CHECK(*rejected == std::vector<fdr::TaskId>{t.id});
      }
    CHECK(env.store.get_run(runs[2]).value()->status == fdr::RunStatus::started);
    CHECK(wait_step_of(env.store, runs[2], "paid").status == "completed");
    // Pruning: the events sent before the cutoff go (oldest first, in batches); the key of one
    // pruned is forgotten.
    const std::string events = "SELECT count(*) FROM flowreg.events";
    const std::string sent_before = flowreg::pgtest::query_one(env.conninfo, events);
    flowreg::pgtest::query_one(env.conninfo,
                               "UPDATE flowreg.events SET sent_at = now() - interval '2 days' "
                               "WHERE idempotency_key = 'e1' OR resumed = 0 RETURNING 1");
    auto pruned = env.store.prune_events(flowreg::Millis{86'400'000}, 2);
    REQUIRE_MESSAGE(pruned, flowreg::testing::failure_text(pruned));
    CHECK(std::to_string(*pruned + std::stoll(flowreg::pgtest::query_one(env.conninfo, events))) ==
          sent_before);
    CHECK(*pruned >= 5);
    CHECK(flowreg::pgtest::query_one(env.conninfo,
                                     "SELECT count(*) FROM flowreg.events WHERE idempotency_key = "
                                     "'e1' OR resumed = 0") == "0");
    CHECK_FALSE(env.store.send_event("paid", {{"order", 9}}, std::string("e1")).value().duplicate);
  }

  TEST_CASE(
      "workers: runs sleep 2 s through a SIGKILL of one worker; a handler snoozes 3 times "
      "on its one attempt") {
    auto s = flowreg::pgtest::wchaos_scene("wait_workers");
    // Worker b runs its handlers in handler processes: a snooze crosses its channel.
    std::vector<flowreg::test::Child> workers;
    for (const char* id : {"a", "b"}) {
      workers.push_back(s.worker(id, {"--lease", "1s", "--concurrency", "4", "--isolation",
                                      id == std::string("a") ? "thread" : "process"}));
      s.wait_serving(id, "wchaos_nap");
    }
    // The 20 runs started in one transaction: their first steps are claimed together, so that all
    // 20 sleep at once for a while (one at a time, on a loaded machine, the first could wake
    // before the last was started).
    std::vector<nlohmann::json> inputs;
    for (int i = 0; i < 20; ++i) inputs.push_back({{"n", i}});
    const std::vector<fdr::RunId> runs = s.start_many("wchaos_nap", inputs);
    // Once they all sleep, worker a dies.
    REQUIRE(flowreg::pgtest::eventually(
        [&] {
          return flowreg::pgtest::query_one(
                     s.conninfo, "SELECT count(*) FROM flowreg.tasks WHERE step_slug = 'nap'") ==
                 "20";
        },
        60s));
    workers[0].signal(SIGKILL);
    CHECK(workers[0].wait(10s) == 128 + SIGKILL);
    for (const auto& run : runs)
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 60s), s.err("b"));
    for (const auto& run : runs) CHECK(s.run_field(run, "status") == "completed");
    // Every sleep lasted its 2 s (its step state's start to end), and took no attempt but the
    // one that ended it.
    CHECK(flowreg::pgtest::query_one(
              s.conninfo,
              "SELECT count(*) FROM flowreg.step_states WHERE step_slug = 'nap' AND status = "
              "'completed' AND finished_at - started_at >= interval '2 s' AND attempts = 1") ==
          "20");
    CHECK(flowreg::pgtest::query_one(
              s.conninfo,
              "SELECT count(*) FROM flowreg.step_states WHERE step_slug = 'nap' AND output ? "
              "'woke_at'") == "20");

    // A handler that snoozes 100 ms 3 times completes on its one attempt.
    const auto calls = s.dir / "calls";
    const auto run =
        s.start("wchaos_snooze", {{"calls", calls.string()}, {"snoozes", 3}, {"ms", 100}});
    REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 30s), s.err("b"));
    CHECK(s.run_field(run, "status") == "completed");
    CHECK(WaitJson::parse(s.run_field(run, "output")) ==
          WaitJson{{"only", {{"calls", 4}, {"attempt", 1}}}});
    CHECK(s.run_field(run, "attempts") == "1");
    workers[1].signal(SIGTERM);
    CHECK(workers[1].wait(30s) == 0);
  }

  TEST_CASE(
      "workers: events resume exactly their runs once through SIGKILLs of senders and workers; "
      "timeouts take a default or fail; a signal from the CLI") {
    auto s = flowreg::pgtest::wchaos_scene("wait_events");
    const auto flowreg = [&](std::vector<std::string> args) { return s.cli(std::move(args)); };
    std::optional<flowreg::test::Child> a(s.worker("a", {"--lease", "1s", "--concurrency", "4"}));
    auto b = s.worker("b", {"--lease", "1s", "--concurrency", "4"});
    s.wait_serving("a", "wchaos_paid");
    s.wait_serving("b", "wchaos_paid");
    constexpr int kRuns = 40;
    std::vector<fdr::RunId> runs;
    for (int i = 0; i < kRuns; ++i) runs.push_back(s.start("wchaos_paid", {{"order", i}}));
    const auto audit = s.dir / "audit";
    // Each order's event from `flowreg events send` with a key; every third sender is SIGKILLed
    // at once (committed or not), then sent again with the same key; worker a is SIGKILLed and
    // started again every 10 events.
    for (int i = 0; i < kRuns; ++i) {
      const std::string data =
          WaitJson{{"order", i}, {"customer", std::to_string(i)}, {"audit", audit.string()}}.dump();
      const std::vector<std::string> argv = {FLOWREG_BINARY,
                                             "--config",
                                             s.config().string(),
                                             "events",
                                             "send",
                                             "paid",
                                             "--data",
                                             data,
                                             "--key",
                                             "order-" + std::to_string(i)};
      if (i % 3 == 0) {
        auto killed = flowreg::test::Child::spawn(argv, (s.dir / "send.out").string(),
                                                  (s.dir / "send.err").string());
        std::this_thread::sleep_for(std::chrono::milliseconds(5 * (i % 7)));
        killed.signal(SIGKILL);
        killed.wait(10s);
      }
      const auto sent = flowreg::test::run_process(argv);
      REQUIRE_MESSAGE(sent.exit_code == 0, sent.err);
      CHECK((sent.out == "1 run(s) resumed\n" ||
             sent.out.starts_with("already sent with this key (event ")));
      if (i % 10 == 9) {
        a->signal(SIGKILL);
        CHECK(a->wait(10s) == 128 + SIGKILL);
        a.emplace(s.worker("a", {"--lease", "1s", "--concurrency", "4"}));
      }
    }
    // An event no run waits for resumes none.
    const auto stray = flowreg({"events", "send", "paid", "--data", R"({"order": 1000})"});
    REQUIRE_MESSAGE(stray.exit_code == 0, stray.err);
    CHECK(stray.out == "0 run(s) resumed\n");
    for (const auto& run : runs)
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 60s), s.err("b"));
    // Every run completed once, its wait's output its own order's event; each event, recorded
    // once per key, resumed one run.
    for (std::size_t i = 0; i < runs.size(); ++i) {
      CAPTURE(i);
      CHECK(s.run_field(runs[i], "status") == "completed");
      CHECK(WaitJson::parse(s.run_field(runs[i], "output"))["ship"]["order"] == i);
    }
    CHECK(flowreg::pgtest::query_one(
              s.conninfo,
              "SELECT count(*) FROM flowreg.events WHERE name = 'paid' AND resumed = 1 AND "
              "idempotency_key = 'order-' || (data->>'order')") == std::to_string(kRuns));
    CHECK(flowreg::pgtest::query_one(s.conninfo, "SELECT count(*) FROM flowreg.events") ==
          std::to_string(kRuns + 1));
    CHECK(flowreg::pgtest::query_one(s.conninfo, "SELECT count(*) FROM flowreg.event_waits") ==
          "0");
    // The audit: each run's "ship" ran with its own order's data, once per attempt.
    std::map<std::string, std::set<std::string>> attempts_of;
    std::ifstream in(audit);
    int lines = 0;
    for (std::string what, customer, run, step, attempt, pid, at;
         in >> what >> customer >> run >> step >> attempt >> pid >> at;) {
      ++lines;
      CHECK(step == "ship");
      const auto it = std::find(runs.begin(), runs.end(), run);
      REQUIRE(it != runs.end());
      CHECK(customer == std::to_string(it - runs.begin()));
      CHECK_MESSAGE(attempts_of[run].insert(attempt).second, run << " attempt " << attempt);
    }
    CHECK(attempts_of.size() == static_cast<std::size_t>(kRuns));
    CHECK(lines >= kRuns);

    // Timeouts: a default output after 1 s, or the step and run failed.
    const auto late = s.start("wchaos_deadline", WaitJson::object());
    const auto expired = s.start("wchaos_expire", WaitJson::object());
    for (const auto& run : {late, expired})
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 30s), s.err("b"));
    CHECK(s.run_field(late, "status") == "completed");
    CHECK(flowreg::pgtest::query_one(
              s.conninfo, "SELECT output FROM flowreg.step_states WHERE run_id = '" + late +
                              "' AND step_slug = 'go'") == R"({"late": true})");
    CHECK(s.run_field(expired, "status") == "failed");
    CHECK(s.run_field(expired, "error") ==
          "step 'go' failed permanently on attempt 1: timed out after 1s waiting for signal 'go'");

    // A signal from the command line, after runs show says what the run waits for.
    const auto run = s.start("wchaos_approval", WaitJson::object());
    REQUIRE(flowreg::pgtest::eventually(
        [&] {
          return flowreg::pgtest::query_one(
                     s.conninfo, "SELECT status FROM flowreg.step_states WHERE run_id = '" + run +
                                     "' AND step_slug = 'approve'") == "started";
        },
        30s));
    const auto shown = flowreg({"runs", "show", run});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    CHECK(shown.out.find("waiting for signal 'approve'") != std::string::npos);
    const auto wrong = flowreg({"runs", "signal", run, "approved"});
    CHECK(wrong.exit_code != 0);
    CHECK(wrong.err.find("waits for no signal 'approved': it waits for 'approve'") !=
          std::string::npos);
    const auto bad = flowreg({"runs", "signal", run, "approve", "--data", "{oops"});
    CHECK(bad.exit_code != 0);
    CHECK(bad.err.find("--data is not valid JSON") != std::string::npos);
    const auto sent = flowreg(
        {"runs", "signal", run, "approve", "--data",
         WaitJson{{"by", "ops"}, {"customer", "sig"}, {"audit", (s.dir / "signal_audit").string()}}
             .dump()});
    REQUIRE_MESSAGE(sent.exit_code == 0, sent.err);
    CHECK(sent.out == "delivered\n");
    REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 30s), s.err("b"));
    CHECK(s.run_field(run, "status") == "completed");
    CHECK(WaitJson::parse(s.run_field(run, "output"))["done"]["by"] == "ops");
    const auto after = flowreg({"runs", "signal", run, "approve"});
    CHECK(after.exit_code != 0);
    CHECK(after.err.find("has ended (completed)") != std::string::npos);
    // A signal sent while the run's first step still runs (1.5 s) is kept, then consumed when the
    // wait step starts.
    const auto early =
        s.start("wchaos_approval_slow",
                {{"audit", (s.dir / "slow_audit").string()}, {"ms", 1500}, {"customer", "early"}});
    const auto kept = flowreg({"runs", "signal", early, "approve", "--data", R"({"by": "early"})"});
    REQUIRE_MESSAGE(kept.exit_code == 0, kept.err);
    CHECK(kept.out == "kept: its wait step has not started yet\n");
    REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(early); }, 30s), s.err("b"));
    CHECK(s.run_field(early, "status") == "completed");
    CHECK(WaitJson::parse(s.run_field(early, "output"))["done"]["approve"]["by"] == "early");
    CHECK(flowreg::pgtest::query_one(s.conninfo,
                                     "SELECT step_slug || ' ' || (consumed_at IS NOT NULL) FROM "
                                     "flowreg.signals WHERE run_id = '" +
                                         early + "'") == "approve true");
    const auto flow_text = flowreg({"flows", "show", "wchaos_paid"});
    REQUIRE_MESSAGE(flow_text.exit_code == 0, flow_text.err);
    CHECK(flow_text.out.find("wait for event 'paid' where /order = /order") != std::string::npos);
    for (auto* w : {&*a, &b}) {
      w->signal(SIGTERM);
      CHECK(w->wait(30s) == 0);
    }
  }

  TEST_CASE(
      "the embedded cluster's postmaster SIGKILLed while runs sleep and wait: each sleep ends "
      "once, on time; a signal and an event sent after the restart are delivered") {
    namespace fs = std::filesystem;
    // A scene on an embedded cluster of its own (its worker starts it, and starts it again).
    flowreg::pgtest::WorkerScene s;
    s.dir = flowreg::pgtest::test_root() / "wait_pg_crash";
    fs::remove_all(s.dir);
    fs::create_directories(s.dir / "plugins");
    for (const auto& d : {flowreg::pgtest::test_root(), s.dir, s.dir / "plugins"})
      fs::permissions(d, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec);
    fs::copy_file(fs::path(FLOWREG_FIXTURE_DIR) / "wchaos.so", s.dir / "plugins" / "wchaos.so");
    fs::permissions(s.dir / "plugins" / "wchaos.so",
                    fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                        fs::perms::others_read);
    std::ofstream(s.config()) << "plugins:\n  dir: plugins\n  watch: false\ndatabase:\n  data_dir: "
                              << WaitJson((s.dir / "data").string()).dump() << "\n";
    auto cluster = fdr::EmbeddedCluster::open(s.dir / "data");
    REQUIRE_MESSAGE(cluster, flowreg::testing::failure_text(cluster));
    flowreg::pgtest::track(*cluster);  // stopped at exit
    s.conninfo = cluster->connection_string();
    auto a = s.worker("a", {"--lease", "1s", "--heartbeat-interval", "500ms"});
    s.wait_serving("a", "wchaos_until");

    // 10 runs sleeping until 8 s from now, one waiting for a signal, one for an event.
    const auto wake = std::chrono::system_clock::now() + 8s;
    const std::string at = fmt::format("{:%Y-%m-%dT%H:%M:%S}Z",
                                       std::chrono::time_point_cast<std::chrono::seconds>(wake));
    std::vector<fdr::RunId> sleepers;
    for (int i = 0; i < 10; ++i) sleepers.push_back(s.start("wchaos_until", {{"at", at}}));
    const auto approval = s.start("wchaos_approval", WaitJson::object());
    const auto paid = s.start("wchaos_paid", {{"order", 5}});
    REQUIRE(flowreg::pgtest::eventually(
        [&] {
          return flowreg::pgtest::query_one_or_empty(
                     s.conninfo,
                     "SELECT count(*) FROM flowreg.step_states WHERE status = 'started' AND "
                     "step_slug IN ('wait', 'approve', 'paid')") == "12";
        },
        30s));

    // PostgreSQL dies; nobody here starts it: the worker does.
    auto status = cluster->status();
    REQUIRE_MESSAGE(status, flowreg::testing::failure_text(status));
    REQUIRE(status->running);
    const pid_t postmaster = status->postmaster_pid;
    REQUIRE(::kill(postmaster, SIGKILL) == 0);
    REQUIRE_MESSAGE(flowreg::pgtest::eventually(
                        [&] {
                          auto now = cluster->status();
                          return now && now->running && now->postmaster_pid != postmaster &&
                                 flowreg::pgtest::query_one_or_empty(s.conninfo, "SELECT 1") == "1";
                        },
                        120s),
                    s.err("a"));
    auto store = fdr::RunStore::connect(s.conninfo);
    REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
    auto signalled = store->send_signal(approval, "approve", {{"by", "after the crash"}});
    REQUIRE_MESSAGE(signalled, flowreg::testing::failure_text(signalled));
    CHECK(signalled->outcome == "delivered");
    auto event = store->send_event("paid", {{"order", 5}});
    REQUIRE_MESSAGE(event, flowreg::testing::failure_text(event));
    CHECK(event->resumed == 1);

    for (const auto& run : sleepers)
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 60s), s.err("a"));
    for (const auto& run : {approval, paid})
      REQUIRE_MESSAGE(flowreg::pgtest::eventually([&] { return s.ended(run); }, 60s), s.err("a"));
    for (const auto& run : sleepers) CHECK(s.run_field(run, "status") == "completed");
    // Each sleep ended once (one attempt, its task claimed once it was due), not before its time.
    CHECK(flowreg::pgtest::query_one(
              s.conninfo,
              "SELECT count(*) FROM flowreg.step_states WHERE step_slug = 'wait' AND status = "
              "'completed' AND attempts = 1 AND finished_at >= '" +
                  at + "'") == "10");
    CHECK(s.run_field(approval, "status") == "completed");
    CHECK(WaitJson::parse(s.run_field(approval, "output"))["done"]["approve"]["by"] ==
          "after the crash");
    CHECK(s.run_field(paid, "status") == "completed");
    CHECK(WaitJson::parse(s.run_field(paid, "output"))["ship"]["paid"]["order"] == 5);
    a.signal(SIGTERM);
    CHECK(a.wait(30s) == 0);
  }

  TEST_CASE("flows show prints a sleep step; runs show says until when a run sleeps") {
    auto s = flowreg::pgtest::wchaos_scene("wait_cli");
    const auto flowreg = [&](std::vector<std::string> args) { return s.cli(std::move(args)); };
    const auto shown = flowreg({"flows", "show", "wchaos_until"});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    CHECK(shown.out.find("sleep until the time at /at of its input") != std::string::npos);
    const auto as_json = flowreg({"flows", "show", "wchaos_nap", "--json"});
    REQUIRE_MESSAGE(as_json.exit_code == 0, as_json.err);
    CHECK(WaitJson::parse(as_json.out)["steps"][1]["sleep"] == WaitJson{{"duration", "2s"}});
    auto w = s.worker("a", {"--concurrency", "1"});
    s.wait_serving("a", "wchaos_until");
    const auto run = s.start("wchaos_until", {{"at", "2099-01-02T03:04:05Z"}});
    const auto run_text = flowreg({"runs", "show", run});
    REQUIRE_MESSAGE(run_text.exit_code == 0, run_text.err);
    CAPTURE(run_text.out);
    CHECK(run_text.out.find("sleeping until 2099-01-02T03:04:05.000Z") != std::string::npos);
    const auto run_json = flowreg({"runs", "show", run, "--json"});
    REQUIRE_MESSAGE(run_json.exit_code == 0, run_json.err);
    CHECK(WaitJson::parse(run_json.out)["steps"][0]["waits_until"] == "2099-01-02T03:04:05.000Z");
    w.signal(SIGTERM);
    CHECK(w.wait(30s) == 0);
  }
}
