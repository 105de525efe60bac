#include "schedule/checks.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>

#include "flowreg/validate.hpp"
#include "schedule/cron.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::schedule {

namespace {

bool is_schedule_name(std::string_view name) {
  if (name.empty() || name.size() > 128 || name[0] < 'a' || name[0] > 'z') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

}  // namespace

std::vector<ScheduleProblem> schedule_problems(const ScheduleDef& def) {
  std::vector<ScheduleProblem> out;
  const auto add = [&](std::string field, std::string message) {
    out.push_back({std::move(field), std::move(message)});
  };
  if (!is_schedule_name(def.name))
    add("name", fmt::format("schedule name '{}': expected lowercase letters, digits, _ . and -, a "
                            "letter first, at most 128 characters",
                            detail::bounded_text(def.name, 200)));
  if (!is_valid_slug(def.flow))
    add("flow", fmt::format("flow '{}': not a flow slug (lowercase letters, digits and _, a "
                            "letter first, at most 63 characters)",
                            detail::bounded_text(def.flow, 200)));
  if (auto cron = Cron::parse(def.cron); !cron) add("cron", cron.error().message);
  if (auto zone = find_zone(def.timezone); !zone) add("timezone", zone.error().message);
  if (def.catch_up != "none" && def.catch_up != "latest" && def.catch_up != "all")
    add("catch_up", fmt::format("catch_up '{}': expected none, latest or all",
                                detail::bounded_text(def.catch_up, 64)));
  if (def.catch_up_max < 1 || def.catch_up_max > 1000)
    add("catch_up_max", fmt::format("catch_up_max {}: expected 1 to 1000", def.catch_up_max));
  if (def.overlap != "allow" && def.overlap != "skip" && def.overlap != "queue")
    add("overlap", fmt::format("overlap '{}': expected allow, skip or queue",
                               detail::bounded_text(def.overlap, 64)));
  if (def.time_key.size() > 64 || detail::utf8_valid(def.time_key) != def.time_key)
    add("time_key", "time_key: at most 64 bytes of UTF-8");
  if (!def.input.is_object())
    add("input", "input: expected an object (each run's input, to which time_key is added)");
  else if (const auto text = detail::json_text(def.input); text.size() > kMaxScheduleInputBytes)
    add("input",
        fmt::format("input: {} bytes of JSON, more than {}", text.size(), kMaxScheduleInputBytes));
  return out;
}

}  // namespace flowreg::schedule
