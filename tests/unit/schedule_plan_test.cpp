// plan_firing: which ticks of a due schedule fire, under each catch-up and overlap policy.

#include <date/date.h>
#include <doctest/doctest.h>

#include <chrono>

#include "flowreg/config.hpp"
#include "schedule/scheduler.hpp"

namespace {

using flowreg::ScheduleDef;
using flowreg::schedule::plan_firing;
using flowreg::schedule::rfc3339;
using flowreg::schedule::TimePoint;
using namespace std::chrono_literals;

// 2026-11-27 at h:m:s UTC.
TimePoint at(int h, int m = 0, int s = 0) {
  return date::sys_days{date::year{2026} / 11 / 27} + std::chrono::hours(h) +
         std::chrono::minutes(m) + std::chrono::seconds(s);
}

ScheduleDef hourly(const std::string& catch_up, const std::string& overlap = "allow",
                   int max = 100) {
  ScheduleDef d;
  d.name = "h";
  d.flow = "f";
  d.cron = "0 * * * *";
  d.catch_up = catch_up;
  d.catch_up_max = max;
  d.overlap = overlap;
  return d;
}

std::string texts(const std::vector<TimePoint>& ticks) {
  std::string out;
  for (const auto t : ticks) out += (out.empty() ? "" : " ") + rfc3339(t);
  return out;
}

}  // namespace

TEST_SUITE("schedule_plan") {
  TEST_CASE("after a downtime, latest fires the latest missed tick and counts the others") {
    auto plan = plan_firing(hourly("latest"), at(10), at(13, 30));
    REQUIRE(plan);
    CHECK(texts(plan->ticks) == "2026-11-27T13:00:00Z");
    CHECK(plan->missed == 3);
    REQUIRE(plan->next);
    CHECK(rfc3339(*plan->next) == "2026-11-27T14:00:00Z");
  }

  TEST_CASE("after a downtime, all fires the latest catch_up_max missed ticks, oldest first") {
    auto plan = plan_firing(hourly("all", "allow", 2), at(10), at(13, 30));
    REQUIRE(plan);
    CHECK(texts(plan->ticks) == "2026-11-27T12:00:00Z 2026-11-27T13:00:00Z");
    CHECK(plan->missed == 2);
    CHECK(rfc3339(*plan->next) == "2026-11-27T14:00:00Z");
  }

  TEST_CASE("none fires a tick only while it is on time") {
    auto late = plan_firing(hourly("none"), at(10), at(13, 30));
    REQUIRE(late);
    CHECK(late->ticks.empty());
    CHECK(late->missed == 4);
    CHECK(rfc3339(*late->next) == "2026-11-27T14:00:00Z");
    auto on_time = plan_firing(hourly("none"), at(13), at(13, 0, 30));
    REQUIRE(on_time);
    CHECK(texts(on_time->ticks) == "2026-11-27T13:00:00Z");
    CHECK(on_time->missed == 0);
  }

  TEST_CASE(
      "with overlap skip or queue, missed ticks fire one at a time, the schedule staying due") {
    for (const char* overlap : {"skip", "queue"}) {
      CAPTURE(overlap);
      auto plan = plan_firing(hourly("all", overlap), at(10), at(13, 30));
      REQUIRE(plan);
      CHECK(texts(plan->ticks) == "2026-11-27T10:00:00Z");
      CHECK(rfc3339(*plan->next) == "2026-11-27T11:00:00Z");
    }
  }

  TEST_CASE("a schedule not due yet fires nothing") {
    auto plan = plan_firing(hourly("all"), at(14), at(13, 30));
    REQUIRE(plan);
    CHECK(plan->ticks.empty());
    CHECK(rfc3339(*plan->next) == "2026-11-27T14:00:00Z");
  }

  TEST_CASE(
      "a schedule of every second, a day late, finds its latest ticks without walking the "
      "day") {
    ScheduleDef d = hourly("all", "allow", 3);
    d.cron = "* * * * * *";
    auto plan = plan_firing(d, at(10) - 24h, at(10));
    REQUIRE(plan);
    CHECK(texts(plan->ticks) == "2026-11-27T09:59:58Z 2026-11-27T09:59:59Z 2026-11-27T10:00:00Z");
    CHECK(plan->missed >= 10'000 - 3);
    CHECK(rfc3339(*plan->next) == "2026-11-27T10:00:01Z");
  }

  TEST_CASE("a run's input is the schedule's input with the tick's time under time_key") {
    ScheduleDef d = hourly("latest");
    d.input = {{"report", "daily"}};
    auto input = flowreg::schedule::tick_input(d, at(9));
    CHECK(input.dump() == R"({"report":"daily","scheduled_at":"2026-11-27T09:00:00Z"})");
    d.time_key = "";
    CHECK(flowreg::schedule::tick_input(d, at(9)).dump() == R"({"report":"daily"})");
  }

  TEST_CASE("a schedule's problems name their field") {
    ScheduleDef d = hourly("sometimes", "never", 0);
    d.name = "Bad Name";
    d.flow = "9flow";
    d.cron = "61 * * * *";
    d.timezone = "Mars/Olympus";
    d.input = nlohmann::json::array();
    std::vector<std::string> fields;
    for (const auto& p : flowreg::schedule::schedule_problems(d)) fields.push_back(p.field);
    CHECK(fields == std::vector<std::string>{"name", "flow", "cron", "timezone", "catch_up",
                                             "catch_up_max", "overlap", "input"});
    CHECK(flowreg::schedule::schedule_problems(hourly("latest")).empty());
  }
}

TEST_SUITE("schedule_plan") {
  TEST_CASE(
      "a file's schedules parse with their defaults; a name declared twice is refused at "
      "its line") {
    auto config = flowreg::parse_config(
        "schedules:\n"
        "  - {name: a, flow: f, cron: \"@hourly\"}\n"
        "  - {name: b, flow: f, cron: \"0 9 * * MON-FRI\", timezone: Europe/Berlin,\n"
        "     input: {x: 1}, time_key: \"\", catch_up: all, catch_up_max: 5, overlap: queue,\n"
        "     paused: true}\n",
        "s.yaml");
    REQUIRE(config);
    REQUIRE(config->schedules.size() == 2);
    const auto& a = config->schedules[0];
    CHECK(a.timezone == "UTC");
    CHECK(a.input == nlohmann::json::object());
    CHECK(a.time_key == "scheduled_at");
    CHECK(a.catch_up == "latest");
    CHECK(a.overlap == "allow");
    CHECK_FALSE(a.paused);
    const auto& b = config->schedules[1];
    CHECK(b.timezone == "Europe/Berlin");
    CHECK(b.input == nlohmann::json{{"x", 1}});
    CHECK(b.time_key.empty());
    CHECK(b.catch_up_max == 5);
    CHECK(b.overlap == "queue");
    CHECK(b.paused);

    auto twice = flowreg::parse_config(
        "schedules:\n"
        "  - {name: a, flow: f, cron: \"@hourly\"}\n"
        "  - {name: a, flow: g, cron: \"@daily\"}\n",
        "t.yaml");
    REQUIRE_FALSE(twice);
    REQUIRE(twice.error().details.size() == 1);
    CHECK(twice.error().details[0].format() ==
          "t.yaml:3:6: schedule name 'a' is declared twice in this file (schedules[0] and "
          "schedules[1])");
  }
}
