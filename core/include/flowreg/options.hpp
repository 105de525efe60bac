#pragma once
// Execution options of flows and steps: the single place where their defaults and ranges live.
//
// clang-format off
// | option       | default | range                | meaning                                      |
// |--------------|---------|----------------------|----------------------------------------------|
// | max_attempts | 3       | 1 .. 1000            | attempts per task, the first one included    |
// | base_delay   | 1s      | 0 .. 7 days          | wait before the first retry                  |
// | max_delay    | 5m      | base_delay .. 7 days | cap of the exponential backoff               |
// | timeout      | 60s     | 1ms .. 7 days        | lease of one attempt; expired -> retried     |
// clang-format on
//
// Retry n (n = 1 for the first retry) waits min(max_delay, base_delay * 2^(n-1)), with jitter.
// Durations are written with a unit in YAML: 250ms, 1s, 5m, 1h.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace flowreg {

using Millis = std::chrono::milliseconds;

struct Options {
  static constexpr int kDefaultMaxAttempts = 3;
  static constexpr Millis kDefaultBaseDelay{1'000};
  static constexpr Millis kDefaultMaxDelay{300'000};
  static constexpr Millis kDefaultTimeout{60'000};

  static constexpr int kMinAttempts = 1;
  static constexpr int kMaxAttempts = 1000;
  static constexpr Millis kMaxDuration{7LL * 24 * 3600 * 1000};
  // A task's priority: among the ready tasks of the flows a worker serves, the highest is claimed
  // first, then the oldest. A run started with a priority (StartOptions::priority) gives it to all
  // its tasks instead.
  static constexpr int kDefaultPriority = 0;
  static constexpr int kMinPriority = -100;
  static constexpr int kMaxPriority = 100;

  int max_attempts = kDefaultMaxAttempts;
  Millis base_delay = kDefaultBaseDelay;
  Millis max_delay = kDefaultMaxDelay;
  Millis timeout = kDefaultTimeout;
  int priority = kDefaultPriority;

  friend bool operator==(const Options&, const Options&) = default;
};

// Options given explicitly on a flow or a step; what is unset is inherited (step <- flow <-
// defaults).
struct OptionOverrides {
  std::optional<int> max_attempts;
  std::optional<Millis> base_delay;
  std::optional<Millis> max_delay;
  std::optional<Millis> timeout;
  std::optional<int> priority;

  bool empty() const noexcept {
    return !max_attempts && !base_delay && !max_delay && !timeout && !priority;
  }
  // These overrides on top of `base`.
  Options apply(const Options& base) const noexcept;
  friend bool operator==(const OptionOverrides&, const OptionOverrides&) = default;
};

// "250ms", "1s", "5m", "1h" -> milliseconds; nullopt when malformed or longer than `max`. The
// default is the 7-day limit of flow options; durations that are not flow options (how old a run
// to prune, how long to wait) pass their own limit.
std::optional<Millis> parse_duration(std::string_view text,
                                     Millis max = Options::kMaxDuration) noexcept;
// Why parse_duration(text, max) refused `text`, as a sentence that states the real limit:
// "'1.5s' is not a duration: write a whole number and a unit (ms, s, m, h or d), such as ..." or
// "'169h' is longer than the limit of 168h (7 days)".
std::string duration_problem(std::string_view text, Millis max = Options::kMaxDuration);
// The shortest exact form: 1500 -> "1500ms", 60000 -> "1m".
std::string format_duration(Millis value);
// The same, in whole days when it is ("3d"): for what is counted in days (a sleep step's).
std::string format_duration_days(Millis value);

}  // namespace flowreg
