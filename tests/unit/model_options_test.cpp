#include <doctest/doctest.h>

#include "flowreg/options.hpp"

using namespace flowreg;
using namespace std::chrono_literals;

TEST_SUITE("model") {
  TEST_CASE("durations parse with each unit and reject anything else") {
    CHECK(parse_duration("250ms") == Millis{250});
    CHECK(parse_duration("1s") == Millis{1000});
    CHECK(parse_duration("5m") == Millis{300'000});
    CHECK(parse_duration("2h") == Millis{7'200'000});
    CHECK(parse_duration("0s") == Millis{0});
    CHECK_FALSE(parse_duration(""));
    CHECK_FALSE(parse_duration("5"));
    CHECK_FALSE(parse_duration("ms"));
    CHECK_FALSE(parse_duration("1.5s"));
    CHECK_FALSE(parse_duration("-1s"));
    CHECK(parse_duration("1d") == Millis{86'400'000});
    CHECK_FALSE(parse_duration("8d"));  // over the 7-day limit
    CHECK_FALSE(parse_duration("1w"));
    // Days that do not fit in 64 bits of milliseconds, whatever the limit.
    CHECK(parse_duration("106751991167d", Millis::max()) == Millis{106751991167LL * 86'400'000});
    CHECK_FALSE(parse_duration("106751991168d", Millis::max()));
    CHECK_FALSE(parse_duration("169h"));  // over the 7-day limit
    CHECK_FALSE(parse_duration("99999999999999h"));
  }

  TEST_CASE(
      "regression: durations take the limit of what they measure, and a refusal states it (720h "
      "of retention was 'not a duration')") {
    constexpr Millis kCentury{876'600LL * 3'600'000};
    CHECK(parse_duration("720h", kCentury) == Millis{720LL * 3'600'000});
    CHECK(parse_duration("876600h", kCentury) == kCentury);
    CHECK_FALSE(parse_duration("876601h", kCentury));
    CHECK_FALSE(parse_duration("720h"));  // flow options keep their 7 days
    CHECK(duration_problem("169h") == "'169h' is longer than the limit of 168h (7 days)");
    CHECK(duration_problem("876601h", kCentury) ==
          "'876601h' is longer than the limit of 876600h (36525 days)");
    CHECK(duration_problem("1.5s") ==
          "'1.5s' is not a duration: write a whole number and a unit (ms, s, m, h or d), such as "
          "250ms, 30s, 5m or 30d");
    CHECK(
        duration_problem("caf\xE9") ==
        "'caf\xEF\xBF\xBD' is not a duration: write a whole number and a unit (ms, s, m, h or d), "
        "such as 250ms, 30s, 5m or 30d");
  }

  TEST_CASE("durations format in the largest exact unit") {
    CHECK(format_duration(Millis{0}) == "0ms");
    CHECK(format_duration(Millis{1500}) == "1500ms");
    CHECK(format_duration(Millis{2000}) == "2s");
    CHECK(format_duration(Millis{120'000}) == "2m");
    CHECK(format_duration(Millis{3'600'000}) == "1h");
  }

  TEST_CASE("step overrides apply on top of the flow's options") {
    Options flow;
    flow.max_attempts = 4;
    OptionOverrides step;
    CHECK(step.empty());
    CHECK(step.apply(flow) == flow);
    step.timeout = Millis{5000};
    const Options effective = step.apply(flow);
    CHECK(effective.max_attempts == 4);
    CHECK(effective.timeout == Millis{5000});
    CHECK(effective.base_delay == Options::kDefaultBaseDelay);
  }
}
