#pragma once
// The checks of a schedule's definition, wherever it comes from (a configuration file, the CLI,
// the API). Apart from the scheduler (scheduler.hpp) so that the parsers of untrusted text link
// them alone (config/, tests/fuzz).
//
// Thread-safety: pure functions.

#include <cstddef>
#include <string>
#include <vector>

#include "flowreg/schedule.hpp"

namespace flowreg::schedule {

// The largest input a schedule stores, in bytes of JSON text.
inline constexpr std::size_t kMaxScheduleInputBytes = 64 * 1024;

// A problem of a schedule's definition: the field it is about and a message naming it.
struct ScheduleProblem {
  std::string
      field;  // name, flow, cron, timezone, catch_up, catch_up_max, overlap, time_key, input
  std::string message;
};

// The checks of a schedule's definition, wherever it comes from (a file, the CLI, the API): its
// name (^[a-z][a-z0-9_.-]{0,127}$), the flow's slug, the cron expression, the time zone,
// catch_up and overlap, catch_up_max (1-1000), time_key (at most 64 bytes), the input (an object
// of at most kMaxScheduleInputBytes of JSON text).
std::vector<ScheduleProblem> schedule_problems(const ScheduleDef& def);

}  // namespace flowreg::schedule
