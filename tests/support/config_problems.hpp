#pragma once
// The formatted problems of loading a configuration from text (tests only).

#include <string>
#include <string_view>
#include <vector>

#include "flowreg/config.hpp"

namespace flowreg::test {

// Every Diagnostic of parse_config(text, "inline.yaml"), formatted; empty when the text loads.
inline std::vector<std::string> problems_of_text(std::string_view text) {
  auto config = parse_config(text, "inline.yaml");
  std::vector<std::string> out;
  if (!config)
    for (const auto& d : config.error().details) out.push_back(d.format());
  return out;
}

}  // namespace flowreg::test
