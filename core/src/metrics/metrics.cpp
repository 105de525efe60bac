#include "metrics/metrics.hpp"

namespace flowreg::detail::metrics {

std::string exposition() {
  std::string out;
  out += "# HELP flowreg_build_info The flowreg build this process runs (always 1).\n";
  out += "# TYPE flowreg_build_info gauge\n";
  out += "flowreg_build_info{version=\"";
  out += FLOWREG_VERSION;
  out += "\"} 1\n";
  return out;
}

}  // namespace flowreg::detail::metrics
