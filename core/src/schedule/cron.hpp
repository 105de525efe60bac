#pragma once
// Cron expressions and the instants they fire at in an IANA time zone.
//
// Syntax: the standard five fields (minute hour day-of-month month day-of-week), or six with a
// leading seconds field; each field a `*`, a number, a range `a-b`, a list `a,b,c`, a step `*/n`
// or `a-b/n` or `a/n`; months JAN-DEC and days SUN-SAT by name (any case), day 7 is Sunday too;
// `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`, alone. When
// both day-of-month and day-of-week are restricted (a field is restricted unless it starts with
// `*`, so
// `*/2` is not), a day matching either fires (as in Vixie cron); otherwise a day must match both.
// Fields are separated by spaces or tabs; only printable ASCII is accepted.
//
// Daylight-saving changes: times are matched in local time; a local time that does not exist (the
// hour skipped in spring) fires at the first instant after the gap, and the times of one gap fire
// once there together (`*/15 * * * *` fires once at 03:00 when 02:00-02:59 is skipped); a local
// time that occurs twice (the hour repeated in autumn) fires once, at its first occurrence: the
// repeated hour fires once, in its first occurrence (`0 * * * *` fires at 02:00 summer time, then
// at 03:00).
//
// Thread-safety: a Cron is immutable once parsed; next_after is const and may run on any thread.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "flowreg/error.hpp"

namespace date {
class time_zone;
}

namespace flowreg::schedule {

using TimePoint = std::chrono::system_clock::time_point;

// The longest expression accepted, in bytes.
inline constexpr std::size_t kMaxCronBytes = 256;
// The longest time zone name accepted, in bytes (the longest IANA name has 32).
inline constexpr std::size_t kMaxZoneNameBytes = 64;

class Cron {
 public:
  // Errc::invalid_argument with a message naming the field, its column (1-based, in bytes) and
  // the reason: "'*/0' (column 1, minute): a step of 0 never fires". An expression that fires at
  // no instant (`0 0 30 2 *`) is refused too ("never fires: February has no day 30").
  static Result<Cron> parse(std::string_view expression);

  // The first instant strictly after `after` (truncated to whole seconds first) at which this
  // fires in `zone`; nullopt when none within the next kSearchYears calendar years (cannot happen
  // for an expression that parse accepted, unless the zone's rules are odd: the rarest, a February
  // 29th that must also be a given weekday, `0 0 29 2 */7` (a `*`-led day-of-week is and-ed with
  // the day-of-month), recurs within 40 years, across 2100). No allocation; about 100-200 ns for
  // typical expressions (bench/cron_bench), and at worst a step per second of a repeated hour.
  std::optional<TimePoint> next_after(TimePoint after, const date::time_zone& zone) const;

  static constexpr int kSearchYears = 50;

  // The expression as given to parse (an alias too, unexpanded).
  const std::string& text() const noexcept { return text_; }
  bool has_seconds() const noexcept { return has_seconds_; }

 private:
  Cron() = default;
  std::string text_;
  bool has_seconds_ = false;
  // Bit i set: value i matches. seconds 0-59, minutes 0-59, hours 0-23, days 1-31, months 1-12,
  // weekdays 0-6 (Sunday 0).
  unsigned long long seconds_ = 0, minutes_ = 0;
  unsigned hours_ = 0, days_ = 0, months_ = 0, weekdays_ = 0;
  bool days_restricted_ = false, weekdays_restricted_ = false;
};

// The zone of an IANA name ("Europe/Berlin", "UTC") from the system's tzdata;
// Errc::invalid_argument
// ("unknown time zone 'Europe/Berln'") when there is none, and for an empty name, one over
// kMaxZoneNameBytes or one with a byte other than ASCII letters, digits, '/', '_', '-' and '+'
// (the name is not echoed then). The pointer lives as long as the process. Thread-safe.
Result<const date::time_zone*> find_zone(std::string_view name);

}  // namespace flowreg::schedule
