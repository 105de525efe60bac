#include "logging/json_log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>

#include "util/strings.hpp"

namespace flowreg::detail::logging {

namespace {

thread_local LogFields current;
std::atomic<bool> json_on{false};

std::string line(std::chrono::system_clock::time_point time, std::string_view level,
                 std::string_view message) {
  nlohmann::ordered_json j;
  const auto us = std::chrono::floor<std::chrono::microseconds>(time);
  const auto seconds = std::chrono::floor<std::chrono::seconds>(us);
  j["time"] = fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06d}Z", seconds,
                          static_cast<long long>((us - seconds).count()));
  j["level"] = level;
  j["message"] = utf8_valid(message);
  const LogFields& f = current;
  if (!f.worker.empty()) j["worker"] = utf8_valid(f.worker);
  if (!f.flow.empty()) j["flow"] = utf8_valid(f.flow);
  if (!f.step.empty()) j["step"] = utf8_valid(f.step);
  if (!f.run.empty()) j["run"] = utf8_valid(f.run);
  if (!f.http.empty()) j["http"] = nlohmann::ordered_json::parse(f.http, nullptr, false);
  std::string out = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  out += '\n';
  return out;
}

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto level = spdlog::level::to_string_view(msg.level);
    const std::string text = line(msg.time, std::string_view(level.data(), level.size()),
                                  std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

LogScope::LogScope(LogFields fields) noexcept : previous_(current) { current = fields; }
LogScope::~LogScope() { current = previous_; }

void use_json() {
  json_on = true;
  spdlog::set_formatter(std::make_unique<JsonFormatter>());
}

bool json_enabled() noexcept { return json_on; }

std::string json_line(std::string_view level, std::string_view message) {
  return line(std::chrono::system_clock::now(), level, message);
}

}  // namespace flowreg::detail::logging
