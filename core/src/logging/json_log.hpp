#pragma once
// Logs as JSON lines (`--log-format json`): one object per line with time (UTC, RFC 3339 with
// microseconds), level, message, and the fields of the LogScope in effect on the logging thread
// (worker, flow, step, run, http, when set). Text is made valid UTF-8 (U+FFFD for invalid bytes)
// and escaped by nlohmann::json, so every line parses whatever a message holds.
//
// Thread-safety: LogScope is per thread; use_json() before other threads log.

#include <memory>
#include <string>
#include <string_view>

namespace flowreg::detail::logging {

// The fields a log line carries; empty ones are left out.
struct LogFields {
  std::string_view worker, flow, step, run;
  std::string_view http;  // a JSON object (serve's access log): the line's "http" member
};

// Sets the calling thread's fields until it dies (then restores the previous ones). The viewed
// strings must outlive it.
class LogScope {
 public:
  explicit LogScope(LogFields fields) noexcept;
  ~LogScope();
  LogScope(const LogScope&) = delete;
  LogScope& operator=(const LogScope&) = delete;

 private:
  LogFields previous_;
};

// Makes the default spdlog logger write JSON lines (pattern ignored), and json_enabled() true.
void use_json();
bool json_enabled() noexcept;

// One JSON line (with its '\n') at `level` ("info", "warn", "error", ...) with the calling
// thread's fields: what the logger writes, for lines printed without it.
std::string json_line(std::string_view level, std::string_view message);

}  // namespace flowreg::detail::logging
