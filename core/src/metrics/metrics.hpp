#pragma once
// The process's Prometheus metrics. exposition() renders every metric of this process in the
// Prometheus text exposition format (version 0.0.4), ready to serve at /metrics.

#include <string>

namespace flowreg::detail::metrics {

// Content-Type of exposition()'s text.
inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

std::string exposition();

}  // namespace flowreg::detail::metrics
