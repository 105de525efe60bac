#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flowreg::detail {

// Levenshtein distance.
std::size_t edit_distance(std::string_view a, std::string_view b);
// The candidate closest to `word` when it is close enough to be a likely typo, else "".
std::string closest_match(std::string_view word, std::span<const std::string> candidates);

}  // namespace flowreg::detail
