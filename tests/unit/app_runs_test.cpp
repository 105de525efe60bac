// app/runs: a run's input checked before anything is written; a signal's or an event's name and
// data; how a wait step and a step's condition are shown (app/forms, the flow's page).

#include <doctest/doctest.h>

#include <string>

#include "app/forms.hpp"
#include "app/runs.hpp"
#include "server/dashboard.hpp"

using namespace flowreg;

namespace {

FlowDef one_step_flow() {
  FlowDef flow;
  flow.slug = "orders";
  StepDef step;
  step.slug = "only";
  step.handler = "m.h";
  flow.steps.push_back(std::move(step));
  return flow;
}

}  // namespace

TEST_SUITE("app_runs") {
  TEST_CASE(
      "regression: an input holding U+0000 reached PostgreSQL, which refused it with a 500 "
      "carrying its own error; it is refused first, in a string or in a key") {
    const FlowDef flow = one_step_flow();
    const auto in_value = app::check_input(R"({"items": [{"sku": "a\u0000b"}]})", flow, "--input");
    REQUIRE_FALSE(in_value);
    CHECK(in_value.error().code == Errc::invalid_argument);
    CHECK(in_value.error().message ==
          "the input holds a string with the character U+0000, which PostgreSQL cannot store");
    REQUIRE(in_value.error().details.size() == 1);
    CHECK(in_value.error().details[0].message == in_value.error().message);

    const auto in_key = app::check_input(R"({"a": {"k\u0000": 1}})", flow, "--input");
    REQUIRE_FALSE(in_key);
    CHECK(in_key.error().code == Errc::invalid_argument);
    CHECK(in_key.error().message ==
          "the input holds a key with the character U+0000, which PostgreSQL cannot store");
  }

  TEST_CASE(
      "regression: invalid JSON was quoted whole in the error (a 60 MB body came back in the "
      "400); the parser's message is cut at 500 bytes") {
    const FlowDef flow = one_step_flow();
    const std::string input = "{\"text\": \"" + std::string(1 << 20, 'x');  // no closing quote
    const auto refused = app::check_input(input, flow, "--input");
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == Errc::parse);
    CHECK(refused.error().message.starts_with("--input is not valid JSON: "));
    CHECK(refused.error().message.size() < 700);
    CHECK(refused.error().message.ends_with(" bytes)"));
  }

  TEST_CASE("an escaped backslash before u0000 is not U+0000, and other escapes pass") {
    const FlowDef flow = one_step_flow();
    const auto input = app::check_input(R"({"path": "C:\\u0000", "t": "\u0001\t"})", flow, "x");
    REQUIRE(input);
    CHECK((*input)["path"] == "C:\\u0000");
  }

  TEST_CASE("a run's priority from outside: an integer from -100 to 100, else refused by name") {
    CHECK(app::check_priority("", "priority").value() == std::nullopt);
    CHECK(app::check_priority("7", "priority").value() == 7);
    CHECK(app::check_priority("+100", "priority").value() == 100);
    CHECK(app::check_priority("-100", "priority").value() == -100);
    for (const char* bad :
         {"101", "-101", "1.5", "high", "7 ", "99999999999999999999", "+-1", "\xff"}) {
      CAPTURE(bad);
      const auto p = app::check_priority(bad, "priority");
      REQUIRE_FALSE(p);
      CHECK(p.error().message.find("priority '") == 0);
      CHECK(p.error().message.find("an integer from -100 to 100") != std::string::npos);
    }
  }

  TEST_CASE("a wait step as flows show, the API and the flow's page show it") {
    FlowDef flow;
    flow.slug = "approval";
    StepDef approve;
    approve.slug = "approve";
    approve.kind = StepKind::wait;
    approve.wait = Wait{};
    approve.wait->signal = "approve";
    approve.wait->timeout = Millis(2 * 86'400'000);
    StepDef paid;
    paid.slug = "paid";
    paid.kind = StepKind::wait;
    paid.wait = Wait{};
    paid.wait->event = "pay.done";
    paid.wait->match = {{"/id", "/approve/id"}};
    paid.wait->timeout = Millis(3'600'000);
    paid.wait->default_output = nlohmann::json{{"paid", false}};
    paid.depends_on = {"approve"};
    flow.steps = {approve, paid};
    CHECK(app::wait_text(*approve.wait) == "wait for signal 'approve', failing after 2d");
    CHECK(app::wait_text(*paid.wait) ==
          "wait for event 'pay.done' where /id = /approve/id, default output after 1h");
    // A pointer holding a control character (a plugin's text reaches terminals): as JSON.
    Wait odd;
    odd.event = "e";
    odd.match = {{"/a\x1b[2J", "/b\n"}};
    CHECK(app::wait_text(odd) == "wait for event 'e' where \"/a\\u001b[2J\" = \"/b\\n\"");
    CHECK(nlohmann::json(app::wait_json(*paid.wait)) ==
          nlohmann::json{{"event", "pay.done"},
                         {"match", {{"/id", "/approve/id"}}},
                         {"timeout", "1h"},
                         {"default", {{"paid", false}}}});
    CHECK(app::waits_for_text(nlohmann::json{{"event", "pay.done"}, {"match", {{"/id", 42}}}}) ==
          "event 'pay.done' where /id = 42");
    CHECK(app::waits_for_text(nlohmann::json{{"signal", "approve"}}) == "signal 'approve'");
    CHECK(app::waits_for_text(nullptr).empty());

    const RegisteredFlow registered{flow, flow_version(flow), "m", "", {}};
    const nlohmann::json j = app::flow_json(registered);
    CHECK(j["steps"][0]["wait"] ==
          nlohmann::json{{"signal", "approve"}, {"timeout", "2d"}, {"default", nullptr}});
    CHECK(j["steps"][0]["handler"] == "");
    const std::string page = detail::dashboard::flow_page(j, nlohmann::json::array());
    CHECK(page.find("waits for signal <code>approve</code>, failing after 2d") !=
          std::string::npos);
    CHECK(page.find("waits for event <code>pay.done</code> where <code>/id</code> = "
                    "<code>/approve/id</code>, default after 1h") != std::string::npos);
  }

  TEST_CASE("a step's condition as flows show, the API and the flow's page show it") {
    CHECK(condition_text(nlohmann::json{{"at", "/o/pay"}, {"equals", "card"}}) ==
          "/o/pay equals \"card\"");
    CHECK(condition_text(nlohmann::json{{"at", ""}, {"exists", false}}) == "the input is missing");
    CHECK(condition_text(nlohmann::json{{"any",
                                         {{{"at", "/a"}, {"in", {1, 2}}},
                                          {{"all",
                                            {{{"at", "/b"}, {"exists", true}},
                                             {{"not", {{"at", "/c"}, {"equals", 0}}}}}}}}}}) ==
          "/a in [1,2] or (/b exists and not (/c equals 0))");
    CHECK(condition_text(nlohmann::json{
              {"not",
               {{"any", {{{"at", "/a"}, {"exists", true}}, {{"at", "/b"}, {"exists", true}}}}}}}) ==
          "not (/a exists or /b exists)");
    // Whatever it is given (the dashboard reads it from JSON), it does not throw.
    CHECK(condition_text(nlohmann::json{{"at", 3}, {"equals", 1}}) == "the input equals 1");
    CHECK(condition_text(nlohmann::json{{"all", 1}}).empty());
    CHECK(condition_text(nlohmann::json(7)).empty());
    // A control character in a pointer is not printed raw.
    CHECK(condition_text(nlohmann::json{{"at", "/a\u001b[31m"}, {"exists", true}}) ==
          "\"/a\\u001b[31m\" exists");

    FlowDef flow = one_step_flow();
    StepDef after;
    after.slug = "after";
    after.handler = "m.after";
    after.depends_on = {"only"};
    after.when = nlohmann::json{{"at", "/only/ok"}, {"equals", true}};
    after.trigger = Trigger::any;
    flow.steps.push_back(after);
    CHECK(app::condition_suffix(flow.steps[0]).empty());
    CHECK(app::condition_suffix(after) == "  when /only/ok equals true  (trigger any)");
    // Shape: a condition or a trigger changes the version.
    FlowDef plain = flow;
    plain.steps[1].when.reset();
    FlowDef all = flow;
    all.steps[1].trigger = Trigger::all;
    CHECK(flow_version(plain) != flow_version(flow));
    CHECK(flow_version(all) != flow_version(flow));
    CHECK(flow_version(all) != flow_version(plain));

    const RegisteredFlow registered{flow, flow_version(flow), "m", "", {}};
    const nlohmann::json j = app::flow_json(registered);
    CHECK(j["steps"][0]["when"].is_null());
    CHECK(j["steps"][0]["trigger"] == "all");
    CHECK(j["steps"][1]["when"] == nlohmann::json{{"at", "/only/ok"}, {"equals", true}});
    CHECK(j["steps"][1]["trigger"] == "any");
    const std::string page = detail::dashboard::flow_page(j, nlohmann::json::array());
    CHECK(page.find("when <code>/only/ok equals true</code>") != std::string::npos);
    CHECK(page.find("trigger any") != std::string::npos);
  }

  TEST_CASE("a signal's or an event's name and data from outside") {
    CHECK(app::check_wait_name("payment.settled:v2-x_1", "event"));
    for (const char* bad : {"", "-x", "a b", "a/b", "é"}) {
      CAPTURE(bad);
      const auto refused = app::check_wait_name(bad, "signal");
      REQUIRE_FALSE(refused);
      CHECK(refused.error().message.starts_with("signal name '"));
    }
    CHECK(app::check_wait_name(std::string(128, 'a'), "signal"));
    CHECK_FALSE(app::check_wait_name(std::string(129, 'a'), "signal"));
    CHECK(app::check_wait_data("", "--data").value().is_null());
    CHECK(app::check_wait_data(R"({"by": "ana"})", "--data").value() ==
          nlohmann::json{{"by", "ana"}});
    const auto bad = app::check_wait_data("{oops", "--data");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == Errc::parse);
    CHECK(bad.error().message.starts_with("--data is not valid JSON"));
    // Bytes that are not UTF-8, and nesting deeper than a run's input may be: refused as such.
    const auto latin1 = app::check_wait_data("{\"by\": \"\xe9\"}", "--data");
    REQUIRE_FALSE(latin1);
    CHECK(latin1.error().code == Errc::parse);
    const auto deep =
        app::check_wait_data(std::string(100'000, '[') + std::string(100'000, ']'), "the data");
    REQUIRE_FALSE(deep);
    CHECK(deep.error().message.starts_with("the data nests deeper than"));
    // A name that is not UTF-8 is refused, its message made valid UTF-8.
    const auto bytes = app::check_wait_name("go\xff", "signal");
    REQUIRE_FALSE(bytes);
    CHECK(bytes.error().message.find("\xff") == std::string::npos);
    const auto nul = app::check_wait_data(R"({"a": "\u0000"})", "--data");
    REQUIRE_FALSE(nul);
    CHECK(nul.error().code == Errc::invalid_argument);
    const std::string big = "\"" + std::string(app::kMaxWaitDataBytes, 'x') + "\"";
    const auto large = app::check_wait_data(big, "the data");
    REQUIRE_FALSE(large);
    CHECK(large.error().message.starts_with("the data is 16777218 bytes; the limit is 16777216"));
  }
}
