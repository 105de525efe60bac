// ordered_copy (util/json_text): how the CLI and the server copy values read from the database or
// a flow file into the ordered_json they print.

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "util/json_text.hpp"
#include "util/strings.hpp"

using flowreg::detail::ordered_copy;

TEST_SUITE("json_text") {
  TEST_CASE("ordered_copy copies every value, keys in order, strings made valid UTF-8") {
    const auto source = nlohmann::json::parse(R"({"b": [1, -2, 18446744073709551615, 2.5, true,
        null, "x", {"z": {}, "a": []}], "a": {"k": "v"}, "": 0})");
    const auto copy = ordered_copy(source);
    CHECK(flowreg::detail::json_text(copy) == flowreg::detail::json_text(source));
    CHECK(copy["b"][2].is_number_unsigned());
    CHECK(copy["b"][1].is_number_integer());
    CHECK(copy["b"][3].is_number_float());

    nlohmann::json invalid = {{"k\xff", "v\xfe"}};
    const auto valid = ordered_copy(invalid);
    CHECK(flowreg::detail::is_utf8(valid.dump()));
    CHECK(valid.dump() == "{\"k\xef\xbf\xbd\":\"v\xef\xbf\xbd\"}");
  }

  TEST_CASE("ordered_copy: 200,000 keys and 20,000 levels") {
    // ordered_json's own insertion searched the keys already there: an input of 100,000 keys took
    // 7.6 s to print (`runs show --json`). Values from the database may nest thousands of levels.
    nlohmann::json wide = nlohmann::json::object();
    for (int i = 0; i < 200'000; ++i) wide["k" + std::to_string(i)] = i;
    const auto copy = ordered_copy(wide);
    REQUIRE(copy.size() == 200'000);
    CHECK(copy.begin().key() == "k0");
    CHECK(copy["k199999"] == 199'999);
    CHECK(flowreg::detail::json_text(copy) == flowreg::detail::json_text(wide));

    nlohmann::json deep = 1;
    for (int i = 0; i < 20'000; ++i) deep = nlohmann::json::array({std::move(deep)});
    const auto deep_copy = ordered_copy(deep);
    const nlohmann::ordered_json* node = &deep_copy;
    int levels = 0;
    while (node->is_array()) {
      node = &(*node)[0];
      ++levels;
    }
    CHECK(levels == 20'000);
    CHECK(*node == 1);
  }
}
