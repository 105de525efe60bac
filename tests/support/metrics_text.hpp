#pragma once
// Reading Prometheus text exposition in tests.

#include <string>

namespace flowreg::test {

// The value of the sample line `series` ("name{labels}") in `text`, or -1 when absent.
inline double metric_sample(const std::string& text, const std::string& series) {
  const std::string key = series + " ";
  for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at + 1))
    if (at == 0 || text[at - 1] == '\n') return std::stod(text.substr(at + key.size()));
  return -1;
}

}  // namespace flowreg::test
