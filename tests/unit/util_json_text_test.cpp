#include <doctest/doctest.h>

#include <string>

#include "util/json_text.hpp"

using flowreg::detail::json_text;
using flowreg::detail::nesting_beyond;

TEST_SUITE("json_text") {
  TEST_CASE("nesting up to the limit passes; one level more is found at its bracket") {
    CHECK_FALSE(nesting_beyond("[[{}]]", 3));
    const auto at = nesting_beyond("[\n [{\"a\": [1]}]]", 3);
    REQUIRE(at);
    CHECK(at->line == 2);
    CHECK(at->column == 9);
  }

  TEST_CASE("brackets inside strings, escaped quotes included, do not count") {
    CHECK_FALSE(nesting_beyond(R"(["[[[", "\"[[[", "\\", {"k[": "{{"}])", 2));
  }

  TEST_CASE("stray closing brackets took the depth below zero and hid the nesting after them") {
    CHECK(nesting_beyond("]]]][[", 1));
    CHECK(nesting_beyond("}}[[", 1));
  }

  TEST_CASE("a value nested 100,000 levels is found without recursion") {
    const std::string deep = std::string(100'000, '[') + std::string(100'000, ']');
    const auto at = nesting_beyond(deep, 64);
    REQUIRE(at);
    CHECK(at->column == 65);
  }

  TEST_CASE("json_text never throws on invalid UTF-8") {
    CHECK(json_text(nlohmann::json("caf\xE9")) == "\"caf\xEF\xBF\xBD\"");
    CHECK(json_text(nlohmann::json{{"a", 1}}, 2) == "{\n  \"a\": 1\n}");
  }
}
