#include "flowreg/options.hpp"

#include <charconv>

namespace flowreg {

Options OptionOverrides::apply(const Options& base) const noexcept {
  Options out = base;
  if (max_attempts) out.max_attempts = *max_attempts;
  if (base_delay) out.base_delay = *base_delay;
  if (max_delay) out.max_delay = *max_delay;
  if (timeout) out.timeout = *timeout;
  return out;
}

std::optional<Millis> parse_duration(std::string_view text) noexcept {
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
  else
    return std::nullopt;
  if (amount > Options::kMaxDuration.count() / scale) return std::nullopt;
  return Millis{amount * scale};
}

std::string format_duration(Millis value) {
  const auto ms = value.count();
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms != 0 && ms % 1'000 == 0) return std::to_string(ms / 1'000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace flowreg
