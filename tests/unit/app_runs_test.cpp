// app/runs: a run's input checked before anything is written.

#include <doctest/doctest.h>

#include <string>

#include "app/runs.hpp"

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
}
