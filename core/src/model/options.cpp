#include "flowreg/options.hpp"

#include <charconv>
#include <limits>

#include "util/strings.hpp"

namespace flowreg {

Options OptionOverrides::apply(const Options& base) const noexcept {
  Options out = base;
  if (max_attempts) out.max_attempts = *max_attempts;
  if (base_delay) out.base_delay = *base_delay;
  if (max_delay) out.max_delay = *max_delay;
  if (timeout) out.timeout = *timeout;
  if (priority) out.priority = *priority;
  return out;
}

namespace {

// The milliseconds `text` says, or nullopt when it is not a whole number and a unit. At most 12
// digits: 999999999999h still fits in 64 bits of milliseconds (not so many days: refused).
std::optional<std::int64_t> duration_millis(std::string_view text) noexcept {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 12) return std::nullopt;
  std::int64_t amount = 0;
  std::from_chars(text.data(), text.data() + digits, amount);
  const std::string_view unit = text.substr(digits);
  std::int64_t scale = 0;
  if (unit == "ms")
    scale = 1;
  else if (unit == "s")
    scale = 1'000;
  else if (unit == "m")
    scale = 60'000;
  else if (unit == "h")
    scale = 3'600'000;
  else if (unit == "d")
    scale = 86'400'000;
  else
    return std::nullopt;
  if (amount > std::numeric_limits<std::int64_t>::max() / scale) return std::nullopt;
  return amount * scale;
}

}  // namespace

std::optional<Millis> parse_duration(std::string_view text, Millis max) noexcept {
  const auto ms = duration_millis(text);
  if (!ms || *ms > max.count()) return std::nullopt;
  return Millis{*ms};
}

std::string duration_problem(std::string_view text, Millis max) {
  const std::string quoted =
      "'" + detail::utf8_valid(detail::utf8_prefix(text, 40)) + (text.size() > 40 ? "...'" : "'");
  if (!duration_millis(text))
    return quoted +
           " is not a duration: write a whole number and a unit (ms, s, m, h or d), such as 250ms, "
           "30s, 5m or 30d";
  constexpr std::int64_t kDay = 24LL * 3'600'000;
  std::string limit = format_duration(max);
  if (max.count() % kDay == 0 && max.count() >= kDay)
    limit += " (" + std::to_string(max.count() / kDay) + " days)";
  return quoted + " is longer than the limit of " + limit;
}

std::string format_duration_days(Millis value) {
  const auto ms = value.count();
  if (ms != 0 && ms % 86'400'000 == 0) return std::to_string(ms / 86'400'000) + "d";
  return format_duration(value);
}

std::string format_duration(Millis value) {
  const auto ms = value.count();
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms != 0 && ms % 1'000 == 0) return std::to_string(ms / 1'000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace flowreg
