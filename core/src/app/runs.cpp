#include "app/runs.hpp"

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <utility>
#include <vector>

#include "app/forms.hpp"
#include "config/yaml_json.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::app {

Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what) {
  if (!flow.input_schema) return check_input(text, flow, what, nullptr);
  auto schema = detail::JsonSchema::compile(*flow.input_schema);
  if (!schema) return tl::unexpected(std::move(schema.error()));
  return check_input(text, flow, what, &*schema);
}

Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what, const detail::JsonSchema* schema) {
  // Checked on the text, before anything recurses into it.
  const int max_depth = detail::YamlLimits{}.max_depth;
  if (auto at = detail::nesting_beyond(text, static_cast<std::size_t>(max_depth)))
    return make_error(Errc::parse,
                      fmt::format("{} nests deeper than {} levels (line {}, column {})", what,
                                  max_depth, at->line, at->column));
  nlohmann::json input;
  try {
    input = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // Bounded: nlohmann's message quotes the last token read, which may be most of the input.
    return make_error(Errc::parse, fmt::format("{} is not valid JSON: {}", what,
                                               detail::bounded_text(e.what(), 500)));
  }
  // What PostgreSQL would refuse, before anything is written. JSON text can only carry U+0000
  // escaped: most inputs are not walked at all.
  if (text.find("\\u0000") != std::string_view::npos) {
    if (auto why = detail::stored_json_problem(input, "input")) {
      std::vector<Diagnostic> problems{Diagnostic{{}, *why}};
      return make_error(Errc::invalid_argument, std::move(*why), std::move(problems));
    }
  }
  if (schema) {
    std::vector<Diagnostic> problems;
    for (const auto& p : schema->validate(input))
      problems.push_back(
          Diagnostic{{}, fmt::format("input of flow '{}': {}", flow.slug, p.message)});
    if (!problems.empty()) {
      std::string message = problems.front().message;
      return make_error(Errc::invalid_argument, std::move(message), std::move(problems));
    }
  }
  return input;
}

Result<std::optional<std::string>> check_idempotency_key(std::string_view key) {
  if (key.empty()) return std::optional<std::string>();
  if (key.size() > kMaxIdempotencyKeyBytes)
    return make_error(
        Errc::invalid_argument,
        fmt::format("the idempotency key is longer than {} bytes", kMaxIdempotencyKeyBytes));
  return std::optional<std::string>(valid_text(key));
}

Result<nlohmann::json> check_wait_data(std::string_view text, std::string_view what) {
  if (text.size() > kMaxWaitDataBytes)
    return make_error(Errc::invalid_argument,
                      fmt::format("{} is {} bytes; the limit is {} (16 MiB, the output limit)",
                                  what, text.size(), kMaxWaitDataBytes));
  return check_input(text.empty() ? std::string_view("null") : text, FlowDef{}, what, nullptr);
}

Result<void> check_wait_name(std::string_view name, std::string_view what) {
  if (is_valid_wait_name(name)) return {};
  return make_error(
      Errc::invalid_argument,
      fmt::format("{} name '{}' is not 1 to {} of A-Z a-z 0-9 _ . : -, starting "
                  "with a letter or a digit",
                  what, detail::bounded_text(valid_text(name), 200), Wait::kMaxNameLength));
}

nlohmann::json signal_sent_json(std::string_view run, std::string_view name,
                                const detail::SignalSent& sent) {
  return {{"id", sent.id}, {"run", run}, {"signal", name}, {"outcome", sent.outcome}};
}

nlohmann::json event_sent_json(std::string_view name, const detail::EventSent& sent) {
  return {
      {"id", sent.id}, {"event", name}, {"resumed", sent.resumed}, {"duplicate", sent.duplicate}};
}

namespace {

// `text` has RFC 3339's shape, the values aside (parse_time checks those): a date, T (or a space),
// hours, minutes and seconds, an optional fraction, then Z or an offset. parse_time alone also
// takes a date without a time, a time without an offset, and durations.
bool rfc3339_shape(std::string_view text) {
  if (text.size() < 20 || text.size() > 40 || text[4] != '-' || text[7] != '-' ||
      (text[10] != 'T' && text[10] != 't' && text[10] != ' ') || text[13] != ':' || text[16] != ':')
    return false;
  const char last = text.back();
  if (last == 'Z' || last == 'z') return true;
  const std::size_t sign = text.size() - 6;
  return text.size() >= 25 && (text[sign] == '+' || text[sign] == '-') &&
         text[text.size() - 3] == ':';
}

std::string shown_at(std::string_view text) {
  return "'" + detail::utf8_valid(detail::utf8_prefix(text, 60)) +
         (text.size() > 60 ? "...'" : "'");
}

}  // namespace

Result<std::optional<int>> check_priority(std::string_view text, std::string_view name) {
  if (text.empty()) return std::optional<int>();
  int value = 0;
  const char* end = text.data() + text.size();
  // An optional '+' before the digits, not before a '-'.
  const bool plus = text.front() == '+' && text.substr(1, 1) != "-";
  const auto [ptr, ec] = std::from_chars(text.data() + (plus ? 1 : 0), end, value);
  if (ec != std::errc() || ptr != end || value < Options::kMinPriority ||
      value > Options::kMaxPriority)
    return make_error(Errc::invalid_argument,
                      fmt::format("{} '{}' is not a priority: write an integer from {} to {}", name,
                                  valid_text(detail::utf8_prefix(text, 40)), Options::kMinPriority,
                                  Options::kMaxPriority));
  return std::optional<int>(value);
}

Result<std::optional<detail::TimePoint>> start_time(std::string_view at, std::string_view delay,
                                                    detail::TimePoint now, std::string_view at_name,
                                                    std::string_view delay_name) {
  using Start = std::optional<detail::TimePoint>;
  if (!at.empty() && !delay.empty())
    return make_error(Errc::invalid_argument,
                      fmt::format("give {} or {}, not both", at_name, delay_name));
  if (!delay.empty()) {
    const auto d = parse_duration(delay, kMaxStartAhead);
    if (!d)
      return make_error(Errc::invalid_argument,
                        fmt::format("{} {}", delay_name, duration_problem(delay, kMaxStartAhead)));
    return d->count() == 0 ? Start() : Start(now + *d);
  }
  if (at.empty()) return Start();
  // A year far ahead is refused before parse_time, whose nanoseconds since the epoch end in 2262.
  const auto this_year = static_cast<int>(
      std::chrono::year_month_day(std::chrono::floor<std::chrono::days>(now)).year());
  int year = 0;
  if (rfc3339_shape(at) && std::from_chars(at.data(), at.data() + 4, year).ptr == at.data() + 4 &&
      year > this_year + 11)
    return make_error(Errc::invalid_argument,
                      fmt::format("{} {} is more than 10 years ahead", at_name, shown_at(at)));
  const auto t = rfc3339_shape(at) ? parse_time(at, now) : std::nullopt;
  if (!t)
    return make_error(Errc::invalid_argument,
                      fmt::format("{} {} is not a time: write RFC 3339, such as "
                                  "2026-11-27T18:00:00Z or 2026-11-27T19:00:00+01:00",
                                  at_name, shown_at(at)));
  if (*t - now > kMaxStartAhead)
    return make_error(Errc::invalid_argument,
                      fmt::format("{} {} is more than 10 years ahead", at_name, shown_at(at)));
  return *t > now ? Start(*t) : Start();  // a time past: at once
}

Result<detail::RunInfo> start_run(detail::RunStore& store, const RegisteredFlow& flow,
                                  const nlohmann::json& input,
                                  const detail::StartOptions& options) {
  if (auto stored = store.upsert_flow(flow.def, flow.version); !stored)
    return tl::unexpected(std::move(stored.error()));
  auto id = store.start_run(flow.def.slug, flow.version, input, options);
  if (!id) return tl::unexpected(std::move(id.error()));
  auto info = store.get_run(*id);
  if (!info) return tl::unexpected(std::move(info.error()));
  if (!*info) return make_error(Errc::not_found, "the run vanished");
  return std::move(**info);
}

std::optional<detail::RetryFrom> parse_retry_from(std::string_view from) {
  if (from.empty() || from == "start") return detail::RetryFrom::start;
  if (from == "failed") return detail::RetryFrom::failed_step;
  return std::nullopt;
}

Result<detail::RunInfo> retry_run(detail::RunStore& store, const detail::RunId& run,
                                  detail::RetryFrom from) {
  auto id = store.retry_run(run, from);
  if (!id) return tl::unexpected(std::move(id.error()));
  auto info = store.get_run(*id);
  if (!info) return tl::unexpected(std::move(info.error()));
  if (!*info) return make_error(Errc::not_found, "the run vanished");
  return std::move(**info);
}

}  // namespace flowreg::app
