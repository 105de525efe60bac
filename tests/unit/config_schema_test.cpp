#include <doctest/doctest.h>

#include <fstream>

#include "config/json_schema.hpp"
#include "flowreg/config.hpp"
#include "support/config_problems.hpp"

using namespace flowreg;
using flowreg::test::problems_of_text;
namespace fs = std::filesystem;

namespace {

// Each (steps, problem): the flow 'a' made of those steps (YAML) has exactly that one problem. (A
// pair, not a structured binding: clang 14 lets no lambda, CAPTURE's, refer to one.)
void check_one_problem_each(const std::vector<std::pair<std::string, std::string>>& cases) {
  for (const auto& item : cases) {
    const std::string& yaml = item.first;
    CAPTURE(yaml);
    const auto got = problems_of_text("flows: [{slug: a, steps: [" + yaml + "]}]\n");
    std::string text;
    for (const auto& g : got) text += g + "\n";
    CAPTURE(text);
    CHECK(got == std::vector<std::string>{item.second});
  }
}

}  // namespace

TEST_SUITE("schema") {
  TEST_CASE("the compiled-in schema is the one in schemas/") {
    std::ifstream in(fs::path(FLOWREG_SOURCE_DIR) / "schemas/flow.schema.json");
    REQUIRE(in);
    CHECK(nlohmann::json::parse(in) == detail::flow_file_schema().document());
  }

  TEST_CASE("unknown keys are refused with a suggestion when one is close") {
    CHECK(problems_of_text("flowz: []\n") ==
          std::vector<std::string>{"inline.yaml:1:1: unknown key 'flowz' (did you mean 'flows'?)"});
    CHECK(
        problems_of_text("flows: [{slug: a, steps: [{slug: s, handler: m.s, dependson: []}]}]\n") ==
        std::vector<std::string>{"inline.yaml:1:51: unknown key 'dependson' in flows[0].steps[0] "
                                 "(did you mean 'depends_on'?)"});
  }

  TEST_CASE("an unknown key with no close match lists the known keys") {
    CHECK(problems_of_text("zzzzzz: 1\n") ==
          std::vector<std::string>{
              "inline.yaml:1:1: unknown key 'zzzzzz'; known keys: database, flows, "
              "module, plugins, schedules, server, worker"});
  }

  TEST_CASE("wrong types say what was expected and what was found") {
    CHECK(problems_of_text("worker: {concurrency: many}\n") ==
          std::vector<std::string>{
              "inline.yaml:1:10: worker.concurrency: expected an integer, got the string 'many'"});
    CHECK(problems_of_text("flows: {}\n") ==
          std::vector<std::string>{"inline.yaml:1:1: flows: expected a list, got a mapping"});
    CHECK(problems_of_text("plugins: {watch: 'yes'}\n") ==
          std::vector<std::string>{
              "inline.yaml:1:11: plugins.watch: expected true or false, got the string 'yes'"});
  }

  TEST_CASE("out-of-range numbers give the range") {
    CHECK(
        problems_of_text(
            "flows: [{slug: a, options: {max_attempts: 0}, steps: [{slug: s, handler: m.s}]}]\n") ==
        std::vector<std::string>{
            "inline.yaml:1:29: flows[0].options.max_attempts: 0 is out of range; it "
            "must be between 1 and 1000"});
    CHECK(problems_of_text("flows: [{slug: a, steps: [{slug: s, handler: m.s, options: "
                           "{priority: 101}}]}]\n") ==
          std::vector<std::string>{"inline.yaml:1:61: flows[0].steps[0].options.priority: 101 is "
                                   "out of range; it must be between -100 and 100"});
    CHECK(problems_of_text("flows: [{slug: a, concurrency: {limit: 0}, steps: [{slug: s, "
                           "handler: m.s}]}]\n") ==
          std::vector<std::string>{"inline.yaml:1:33: flows[0].concurrency.limit: 0 is out of "
                                   "range; it must be between 1 and 100000"});
  }

  TEST_CASE("a concurrency limit needs a limit, and a key that is a JSON pointer") {
    CHECK(problems_of_text("flows: [{slug: a, steps: [{slug: s, handler: m.s, concurrency: "
                           "{limit: 2, key: customer_id}}]}]\n") ==
          std::vector<std::string>{
              "inline.yaml:1:75: flows[0].steps[0].concurrency.key: the string 'customer_id' is "
              "not valid: expected a JSON pointer into the run's input, such as /customer_id (~1 "
              "for /, ~0 for ~), whose text is the key (\"\" when the input has nothing there); "
              "unset: one key"});
    CHECK(problems_of_text(
              "flows: [{slug: a, concurrency: {key: /c}, steps: [{slug: s, handler: m.s}]}]\n") ==
          std::vector<std::string>{
              "inline.yaml:1:19: flows[0].concurrency: missing required key 'limit'"});
  }

  TEST_CASE("a rate limit needs a limit and a period; its key is a JSON pointer") {
    CHECK(problems_of_text("flows: [{slug: a, rate_limit: {limit: 5}, steps: [{slug: s, "
                           "handler: m.s}]}]\n") ==
          std::vector<std::string>{
              "inline.yaml:1:19: flows[0].rate_limit: missing required key 'per'"});
    CHECK(problems_of_text("flows: [{slug: a, steps: [{slug: s, handler: m.s, rate_limit: "
                           "{limit: 0, per: 1s}}]}]\n") ==
          std::vector<std::string>{"inline.yaml:1:64: flows[0].steps[0].rate_limit.limit: 0 is "
                                   "out of range; it must be between 1 and 1000000"});
    CHECK(problems_of_text("flows: [{slug: a, rate_limit: {limit: 5, per: 1 sec}, steps: [{slug: "
                           "s, handler: m.s}]}]\n")
              .size() == 1);
  }

  TEST_CASE("a sleep step: no handler, a duration or an until pointer, not both") {
    // Valid: a duration, or a pointer; a step of another kind still needs its handler.
    const auto valid = problems_of_text(
        "flows: [{slug: a, steps: [{slug: s, kind: sleep, duration: 3d}, {slug: u, kind: sleep, "
        "until: /s/woke_at, depends_on: [s]}]}]\n");
    CHECK(valid == std::vector<std::string>{});
    CHECK(problems_of_text("flows: [{slug: a, steps: [{slug: s}]}]\n") ==
          std::vector<std::string>{
              "inline.yaml:1:27: flows[0].steps[0]: missing required key 'handler'"});
    check_one_problem_each(
        {{"{slug: s, kind: sleep}",
          "inline.yaml:1:27: flow 'a': step 's' is a sleep step: give it either duration (3d) "
          "or until (a JSON pointer to an RFC 3339 time in its input)"},
         {"{slug: s, kind: sleep, duration: 1s, until: /at}",
          "inline.yaml:1:27: flow 'a': step 's' is a sleep step: give it either duration (3d) "
          "or until (a JSON pointer to an RFC 3339 time in its input), not both"},
         {"{slug: s, kind: sleep, duration: 1s, handler: m.s}",
          "inline.yaml:1:64: flow 'a': step 's' is a sleep step and runs no handler; remove "
          "handler 'm.s'"},
         {"{slug: s, handler: m.s, duration: 1s}",
          "inline.yaml:1:27: flow 'a': step 's' has a sleep (duration) but is not a sleep "
          "step: give it kind: sleep"},
         {"{slug: s, kind: sleep, duration: 400d}",
          "inline.yaml:1:50: flow 'a': step 's': sleep duration 400d is out of range "
          "1ms..366d"},
         {"{slug: s, kind: sleep, duration: 1s, concurrency: {limit: 1}}",
          "inline.yaml:1:64: flow 'a': step 's' is a sleep step: it runs no handler, so it "
          "takes no concurrency or rate limit"},
         {"{slug: s, handler: m.s}, {slug: w, kind: sleep, until: /x/at, depends_on: [s]}",
          "inline.yaml:1:75: flow 'a': step 'w': until '/x/at' points into 'x', which is not "
          "one of its dependencies (s): its input is {dependency: output}"},
         {"{slug: s, kind: sleep, until: at}",
          "inline.yaml:1:50: flows[0].steps[0].until: the string 'at' is not valid: expected "
          "a JSON pointer into a sleep step's input (its run's input for a root step, else "
          "{dependency: output}), such as /approve/remind_at, to an RFC 3339 time that the "
          "step sleeps until"}});
  }

  TEST_CASE("a wait step: no handler, a signal or an event with a match, a timeout in range") {
    const auto valid = problems_of_text(
        "flows: [{slug: a, steps: [{slug: o, handler: m.o}, {slug: s, kind: wait, signal: "
        "approve, timeout: 2d, depends_on: [o]}, {slug: e, kind: wait, event: pay.done, match: "
        "{/id: /o/id}, timeout: 1h, default: {paid: false}, depends_on: [o]}]}]\n");
    CHECK(valid == std::vector<std::string>{});
    check_one_problem_each(
        {{"{slug: s, kind: wait}",
          "inline.yaml:1:27: flow 'a': step 's' is a wait step: give it either signal (a name "
          "sent to its run) or event (a name, with match)"},
         {"{slug: s, kind: wait, signal: x, event: y}",
          "inline.yaml:1:27: flow 'a': step 's' is a wait step: give it either signal (a name "
          "sent to its run) or event (a name, with match), not both"},
         {"{slug: s, kind: wait, signal: x, handler: m.s}",
          "inline.yaml:1:60: flow 'a': step 's' is a wait step and runs no handler; remove "
          "handler 'm.s'"},
         {"{slug: s, handler: m.s, timeout: 1s}",
          "inline.yaml:1:27: flow 'a': step 's' has a wait (signal, event, match, timeout or "
          "default) but is not a wait step: give it kind: wait (an attempt's timeout is "
          "options: timeout)"},
         {"{slug: s, kind: wait, signal: x, timeout: 400d}",
          "inline.yaml:1:60: flow 'a': step 's': wait timeout 400d is out of range 1ms..366d"},
         {"{slug: s, kind: wait, signal: x, default: 1}",
          "inline.yaml:1:60: flow 'a': step 's': a default output is taken when the wait "
          "times out; give it a timeout too"},
         {"{slug: s, kind: wait, signal: x, match: {/a: /b}}",
          "inline.yaml:1:60: flow 'a': step 's' waits for a signal, sent to its run: a match "
          "is for an event"},
         {"{slug: s, kind: wait, signal: x}, {slug: t, kind: wait, signal: x}",
          "inline.yaml:1:83: flow 'a': step 't' waits for signal 'x', as step 's' does: a "
          "signal is delivered to one wait step of its run; give each its own name"},
         {"{slug: o, handler: m.o}, {slug: e, kind: wait, event: p, match: {/id: /x/id}, "
          "depends_on: [o]}",
          "inline.yaml:1:92: flow 'a': step 'e': match '/id' reads '/x/id' points into 'x', "
          "which is not one of its dependencies (o): its input is {dependency: output}"},
         {"{slug: s, kind: wait, event: p, match: {/id: id}}",
          "inline.yaml:1:67: flows[0].steps[0].match./id: the string 'id' is not valid: "
          "expected a JSON pointer, such as /order/id"},
         {"{slug: s, kind: wait, signal: 'a b'}",
          "inline.yaml:1:49: flows[0].steps[0].signal: the string 'a b' is not valid: "
          "expected a signal or event name: 1 to 128 of A-Z a-z 0-9 _ . : -, starting with a "
          "letter or a digit"},
         {"{slug: s, kind: wait, signal: x, concurrency: {limit: 1}}",
          "inline.yaml:1:60: flow 'a': step 's' is a wait step: it runs no handler, so it "
          "takes no concurrency or rate limit"}});
  }

  TEST_CASE("a step's condition: its forms, pointers into its dependencies, its bounds") {
    const auto valid = problems_of_text(
        "flows: [{slug: a, steps: [{slug: o, handler: m.o, when: {at: /vip, exists: true}}, "
        "{slug: p, handler: m.p, depends_on: [o], when: {all: [{at: /o/pay, in: [card, cash]}, "
        "{not: {at: /o/n, equals: 3}}, {any: [{at: /o/x, exists: false}]}]}}, {slug: q, handler: "
        "m.q, depends_on: [o, p], trigger: any}]}]\n");
    CHECK(valid == std::vector<std::string>{});
    check_one_problem_each(
        {{"{slug: s, handler: m.s, when: {at: /a}}",
          "inline.yaml:1:51: flow 'a': step 's': a condition has keys at; it must be one of "
          "{at: /pointer, equals: value}, {at, in: [values]}, {at, exists: true|false}, {all: "
          "[conditions]}, {any: [conditions]} or {not: condition}"},
         {"{slug: s, handler: m.s, when: {at: /a, equals: 1, in: [1]}}",
          "inline.yaml:1:51: flow 'a': step 's': a condition has keys at, equals, in; it must "
          "be one of {at: /pointer, equals: value}, {at, in: [values]}, {at, exists: "
          "true|false}, {all: [conditions]}, {any: [conditions]} or {not: condition}"},
         {"{slug: s, handler: m.s, when: {all: [{at: /a, equal: 1}]}}",
          "inline.yaml:1:73: flow 'a': step 's': unknown key 'equal' in a condition; a "
          "condition is {at: /pointer, equals: value}, {at, in: [values]}, {at, exists: "
          "true|false}, {all: [conditions]}, {any: [conditions]} or {not: condition}"},
         {"{slug: s, handler: m.s, when: {any: []}}",
          "inline.yaml:1:58: flow 'a': step 's': any takes a list of 1 to 100 conditions"},
         {"{slug: s, handler: m.s, when: {not: [1]}}",
          "inline.yaml:1:58: flow 'a': step 's': a condition is an object, {at: /pointer, "
          "equals: value}, {at, in: [values]}, {at, exists: true|false}, {all: [conditions]}, "
          "{any: [conditions]} or {not: condition}; got [1]"},
         {"{slug: s, handler: m.s, when: {at: /a, in: 1}}",
          "inline.yaml:1:66: flow 'a': step 's': in takes a list of 1 to 100 values"},
         {"{slug: s, handler: m.s, when: {at: /a, exists: yes}}",
          "inline.yaml:1:66: flow 'a': step 's': exists is true or false"},
         {"{slug: s, handler: m.s, when: {at: a, equals: 1}}",
          "inline.yaml:1:58: flow 'a': step 's': when at 'a' is not a JSON pointer: it must be "
          "empty or start with '/' (/customer_id)"},
         {"{slug: s, handler: m.s, when: {at: /a, equals: 1}, trigger: any}",
          "inline.yaml:1:78: flow 'a': step 's' has trigger: any but no dependency: trigger "
          "says which of its dependencies it needs completed"},
         {"{slug: s, handler: m.s, trigger: some}",
          "inline.yaml:1:51: flows[0].steps[0].trigger: expected one of all, any, got the "
          "string 'some'"},
         {"{slug: o, handler: m.o}, {slug: s, handler: m.s, depends_on: [o], when: {at: /x/id, "
          "equals: 1}}",
          "inline.yaml:1:100: flow 'a': step 's': when at '/x/id' points into 'x', which is "
          "not one of its dependencies (o): its input is {dependency: output}"},
         {"{slug: s, handler: m.s, when: {not: {not: {not: {not: {not: {not: {not: {not: "
          "{at: /a, exists: true}}}}}}}}}}",
          "inline.yaml:1:100: flow 'a': step 's': its condition nests deeper than 8 levels"}});
    // 65 parts: over the bound, said once.
    std::string many = "{slug: s, handler: m.s, when: {any: [";
    for (int i = 0; i < 64; ++i) many += (i ? ", " : "") + std::string("{at: /a, exists: true}");
    const auto got = problems_of_text("flows: [{slug: a, steps: [" + many + "]}}]}]\n");
    REQUIRE(got.size() == 1);
    CHECK(got[0].ends_with("flow 'a': step 's': its condition has more than 64 parts"));
  }

  TEST_CASE("a flow step: its child flow, no handler; cycles of flows declared together") {
    const auto valid = problems_of_text(
        "flows: [{slug: a, steps: [{slug: o, handler: m.o}, {slug: c, kind: flow, flow: b, "
        "depends_on: [o]}, {slug: m, kind: flow, flow: b, map: true, depends_on: [o]}]}, "
        "{slug: b, steps: [{slug: x, handler: m.x}]}]\n");
    CHECK(valid == std::vector<std::string>{});
    check_one_problem_each(
        {{"{slug: s, kind: flow}",
          "inline.yaml:1:27: flow 'a': step 's' is a flow step: give it flow, the slug of the flow "
          "whose run it starts"},
         {"{slug: s, kind: flow, flow: b, handler: m.s}",
          "inline.yaml:1:58: flow 'a': step 's' is a flow step and runs no handler; remove "
          "handler 'm.s'"},
         {"{slug: s, handler: m.s, flow: b}",
          "inline.yaml:1:27: flow 'a': step 's' has flow but is not a flow step: give it kind: "
          "flow"},
         {"{slug: s, handler: m.s, map: true}",
          "inline.yaml:1:27: flow 'a': step 's' has map but is not a flow step: give it kind: flow "
          "(a map over a handler is kind: map)"},
         {"{slug: s, kind: flow, flow: a}",
          "inline.yaml:1:49: flow 'a': step 's' starts flow 'a', its own: a flow cannot start "
          "itself (each run would start another)"},
         {"{slug: s, kind: flow, flow: 'B!'}",
          "inline.yaml:1:49: flows[0].steps[0].flow: the string 'B!' is not valid: expected "
          "lowercase letters, digits and _, a letter first, at most 63 characters"},
         {"{slug: o, handler: m.o}, {slug: p, handler: m.p}, {slug: s, kind: flow, flow: b, map: "
          "true, depends_on: [o, p]}",
          "inline.yaml:1:119: flow 'a': map step 's' has 2 dependencies (o, p); a map step takes "
          "at "
          "most one"},
         {"{slug: s, kind: flow, flow: b, rate_limit: {limit: 1, per: 1s}}",
          "inline.yaml:1:58: flow 'a': step 's' is a flow step: it runs no handler, so it takes no "
          "concurrency or rate limit"}});
    // a -> b -> c -> a, declared in one file: one problem, at the first flow's step.
    CHECK(problems_of_text(
              "flows: [{slug: a, steps: [{slug: s, kind: flow, flow: b}]}, {slug: b, steps: "
              "[{slug: t, kind: flow, flow: c}]}, {slug: c, steps: [{slug: u, handler: m.u}, "
              "{slug: v, kind: flow, flow: a, depends_on: [u]}]}]\n") ==
          std::vector<std::string>{
              "inline.yaml:1:49: flow 'a': step 's' starts flow 'b', and flows start one another "
              "in a cycle (a -> b -> c -> a): each run would start another"});
  }

  TEST_CASE("retention: a flow's ages over the worker's defaults, keep, and ages out of range") {
    auto config = parse_config(
        "worker: {retention: {completed: 2d, events: keep, interval: 30s}}\n"
        "flows: [{slug: a, retention: {completed: keep, failed: 90d}, steps: [{slug: s, handler: "
        "m.s}]}, {slug: b, steps: [{slug: s, handler: m.s}]}]\n",
        "inline.yaml");
    REQUIRE(config);
    const auto& w = config->worker.retention;
    CHECK(w.runs.completed == Millis(2 * 86'400'000LL));
    CHECK(w.runs.failed == Millis(30 * 86'400'000LL));  // the defaults it does not set
    CHECK(w.runs.cancelled == Millis(7 * 86'400'000LL));
    CHECK(w.events == Retention::kKeep);
    CHECK(w.interval == Millis(30'000));
    CHECK(w.enabled);
    const auto& a = config->flows.at(0).retention;
    CHECK(a.completed == Retention::kKeep);
    CHECK(a.failed == Millis(90 * 86'400'000LL));
    CHECK_FALSE(a.cancelled);
    CHECK(config->flows.at(1).retention.empty());
    // The built-in defaults.
    const RetentionSettings defaults;
    CHECK(defaults.runs.completed == Millis(7 * 86'400'000LL));
    CHECK(defaults.runs.failed == Millis(30 * 86'400'000LL));
    CHECK(defaults.interval == Millis(60'000));

    CHECK(
        problems_of_text("flows: [{slug: a, retention: {completed: 0s}, steps: [{slug: s, "
                         "handler: m.s}]}]\n") ==
        std::vector<std::string>{"inline.yaml:1:31: flow 'a': retention of completed runs: 0ms is "
                                 "out of range 1s..3660d (or keep)"});
    CHECK(problems_of_text("flows: [{slug: a, retention: {failed: 4000d}, steps: [{slug: s, "
                           "handler: m.s}]}]\n") ==
          std::vector<std::string>{"inline.yaml:1:31: flow 'a': retention of failed runs: 4000d is "
                                   "out of range 1s..3660d (or keep)"});
    CHECK(problems_of_text("flows: [{slug: a, retention: {done: 1d}, steps: [{slug: s, handler: "
                           "m.s}]}]\n")
              .size() == 1);
    CHECK(problems_of_text("worker: {retention: {cancelled: forever}}\n").size() == 1);
    CHECK(problems_of_text("worker: {retention: {events: 500ms, interval: 2d}}\n") ==
          std::vector<std::string>{
              "inline.yaml:1:22: worker retention of events: 500ms is out of range 1s..3660d (or "
              "keep)",
              "inline.yaml:1:37: worker retention interval 2d is out of range 1s..1d"});
  }

  TEST_CASE("bad identifiers, durations and enum values explain the expected form") {
    const auto p = problems_of_text(
        "flows: [{slug: Bad, options: {timeout: 5}, steps: [{slug: s, handler: x, kind: "
        "mapp}]}]\n");
    REQUIRE(p.size() == 4);
    CHECK(p[0] ==
          "inline.yaml:1:10: flows[0].slug: the string 'Bad' is not valid: expected lowercase "
          "letters, digits and _, a letter first, at most 63 characters");
    CHECK(p[1] ==
          "inline.yaml:1:31: flows[0].options.timeout: expected a string, got the integer 5");
    CHECK(p[2] ==
          "inline.yaml:1:62: flows[0].steps[0].handler: the string 'x' is not valid: expected "
          "module.handler, both parts lowercase identifiers");
    CHECK(p[3] ==
          "inline.yaml:1:74: flows[0].steps[0].kind: expected one of single, map, sleep, wait, "
          "flow, got "
          "the "
          "string 'mapp' (did you mean 'map'?)");
  }

  TEST_CASE("missing required keys and empty step lists are reported") {
    const auto p = problems_of_text("flows: [{steps: []}]\n");
    REQUIRE(p.size() == 2);
    CHECK(p[0] == "inline.yaml:1:9: flows[0]: missing required key 'slug'");
    CHECK(p[1] == "inline.yaml:1:10: flows[0].steps: needs at least 1 item(s)");
  }

  TEST_CASE("structural problems of one flow do not hide semantic problems of another") {
    const auto p = problems_of_text(R"(
flows:
  - {slug: Bad, steps: [{slug: s, handler: m.s}]}
  - {slug: good, steps: [{slug: s, handler: m.s, depends_on: [zz]}]}
)");
    REQUIRE(p.size() == 2);
    CHECK(p[0].find("flows[0].slug") != std::string::npos);
    CHECK(p[1] == "inline.yaml:4:63: flow 'good': step 's' depends on unknown step 'zz'");
  }

  TEST_CASE("a JSON Schema validates instances and reports each problem with its path") {
    auto schema = detail::JsonSchema::compile(nlohmann::json::parse(
        R"({"type":"object","required":["order_id"],"properties":{"order_id":{"type":"string"}}})"));
    REQUIRE(schema);
    CHECK(schema->validate(nlohmann::json{{"order_id", "o-1"}}).empty());
    auto problems = schema->validate(nlohmann::json{{"order_id", 5}});
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].pointer == "/order_id");
    CHECK(problems[0].message == "order_id: expected a string, got the integer 5");
    CHECK(schema->validate(nlohmann::json::object())[0].message ==
          "(top level): missing required key 'order_id'");
  }
}
