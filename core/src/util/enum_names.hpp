#pragma once
// Names of enum values, as messages, JSON and the command line spell them: one table of
// {value, name} pairs per enum, read in both directions.
//
//   constexpr EnumName<RunStatus> kRunStatusNames[] = {{RunStatus::started, "started"}, ...};
//   name_in(kRunStatusNames, status)      // "started"
//   value_in(kRunStatusNames, "started")  // RunStatus::started
//
// A table lists every value of its enum; its unit tests check each name, since the compiler does
// not see a value missing from a table as it would from a switch.

#include <cstddef>
#include <optional>
#include <string_view>
#include <utility>

namespace flowreg::detail {

template <class E>
using EnumName = std::pair<E, std::string_view>;

// The name of `value`, or `otherwise` when the table lacks it.
template <class E, std::size_t N>
constexpr std::string_view name_in(const EnumName<E> (&names)[N], E value,
                                   std::string_view otherwise = "unknown") noexcept {
  for (const auto& [known, name] : names)
    if (known == value) return name;
  return otherwise;
}

// The value named `name`, or nullopt.
template <class E, std::size_t N>
constexpr std::optional<E> value_in(const EnumName<E> (&names)[N], std::string_view name) noexcept {
  for (const auto& [value, known] : names)
    if (known == name) return value;
  return std::nullopt;
}

}  // namespace flowreg::detail
