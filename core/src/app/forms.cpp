#include "app/forms.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstring>

#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::app {

std::string valid_text(std::string_view raw) { return detail::utf8_valid(raw); }

std::string plugin_error_text(const PluginError& error) {
  return fmt::format("[{}] {}", to_string(error.stage), error.message);
}

json plugin_error_json(const PluginError& error) {
  return {{"stage", to_string(error.stage)}, {"message", valid_text(error.message)}};
}

std::string iso_time(const detail::TimePoint& t) {
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::seconds>(t));
}

std::optional<detail::TimePoint> parse_time(std::string_view text, detail::TimePoint now) {
  if (text.empty() || text.size() > 40) return std::nullopt;
  if (text.size() < 10 || text[4] != '-') {  // not a date: a duration before now
    auto d = parse_duration(text, Millis(100LL * 366 * 24 * 3600 * 1000));
    if (!d) return std::nullopt;
    return now - *d;
  }
  // YYYY-MM-DD, then optionally [T ]HH:MM[:SS[.fraction]], then optionally Z or ±HH:MM.
  const auto digits = [&](std::size_t at, std::size_t n) -> std::optional<int> {
    if (at + n > text.size()) return std::nullopt;
    int v = 0;
    for (std::size_t i = at; i < at + n; ++i) {
      if (text[i] < '0' || text[i] > '9') return std::nullopt;
      v = v * 10 + (text[i] - '0');
    }
    return v;
  };
  const auto y = digits(0, 4), mo = digits(5, 2), d = digits(8, 2);
  if (!y || !mo || !d || text[7] != '-' || *mo < 1 || *mo > 12 || *d < 1) return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year(*y),
                                        std::chrono::month(static_cast<unsigned>(*mo)),
                                        std::chrono::day(static_cast<unsigned>(*d))};
  if (!ymd.ok()) return std::nullopt;
  auto t = std::chrono::sys_days(ymd) + std::chrono::microseconds(0);
  std::size_t at = 10;
  if (at < text.size() && (text[at] == 'T' || text[at] == 't' || text[at] == ' ')) {
    const auto h = digits(at + 1, 2), mi = digits(at + 4, 2);
    if (!h || !mi || text[at + 3] != ':' || *h > 23 || *mi > 59) return std::nullopt;
    t += std::chrono::hours(*h) + std::chrono::minutes(*mi);
    at += 6;
    if (at < text.size() && text[at] == ':') {
      const auto sec = digits(at + 1, 2);
      if (!sec || *sec > 60) return std::nullopt;
      t += std::chrono::seconds(*sec);
      at += 3;
      if (at < text.size() && text[at] == '.') {  // a fraction: to the microsecond
        std::int64_t us = 0, scale = 100000;
        std::size_t i = at + 1;
        for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, scale /= 10)
          us += scale * (text[i] - '0');
        if (i == at + 1) return std::nullopt;
        t += std::chrono::microseconds(us);
        at = i;
      }
    }
    if (at < text.size() && (text[at] == 'Z' || text[at] == 'z')) {
      ++at;
    } else if (at < text.size() && (text[at] == '+' || text[at] == '-')) {
      const auto oh = digits(at + 1, 2), om = digits(at + 4, 2);
      if (!oh || !om || text[at + 3] != ':' || *oh > 23 || *om > 59) return std::nullopt;
      const auto offset = std::chrono::hours(*oh) + std::chrono::minutes(*om);
      t += text[at] == '+' ? -offset : offset;  // the UTC time of a local one
      at += 6;
    }
  }
  if (at != text.size()) return std::nullopt;
  return std::chrono::time_point_cast<detail::TimePoint::duration>(t);
}

json to_ordered(const nlohmann::json& j) { return detail::ordered_copy(j); }

std::string run_status(detail::RunStatus status, bool scheduled) {
  return scheduled ? std::string("scheduled") : std::string(detail::to_string(status));
}

namespace {

// {"held_key", "waiting": {"step", "key", "limit", "holding", "text"}}, null when neither.
json run_concurrency_json(const detail::RunInfo& r) {
  if (!r.held_key && !r.waiting) return nullptr;
  json out{{"held_key", r.held_key ? json(valid_text(*r.held_key)) : json(nullptr)},
           {"waiting", nullptr}};
  if (r.waiting)
    out["waiting"] = {
        {"step", r.waiting->step.empty() ? json(nullptr) : json(r.waiting->step)},
        {"key", valid_text(r.waiting->key)},
        {"limit", r.waiting->limit > 0 ? json(r.waiting->limit) : json(nullptr)},
        {"holding", r.waiting->holding},
        {"rate_limit", r.waiting->rate_limit > 0
                           ? json{{"limit", r.waiting->rate_limit},
                                  {"per", format_duration(Millis{r.waiting->rate_per_ms})}}
                           : json(nullptr)},
        {"rate_limited_until",
         r.waiting->rate_until ? json(iso_time_ms(*r.waiting->rate_until)) : json(nullptr)},
        {"text", waiting_text(r)}};
  return out;
}

}  // namespace

json run_parent_json(const detail::RunInfo& r) {
  if (!r.parent) return nullptr;
  return {{"run", r.parent->run}, {"step", r.parent->step}, {"index", r.parent->index}};
}

json run_children_json(const detail::RunInfo& r) {
  json out = json::array();
  for (const auto& c : r.children)
    out.push_back({{"id", c.id},
                   {"flow", c.flow},
                   {"step", c.step},
                   {"index", c.index},
                   {"status", detail::to_string(c.status)}});
  return out;
}

json run_json(const detail::RunInfo& r) {
  return {{"id", r.id},
          {"flow", r.flow_slug},
          {"version", r.flow_version},
          {"status", run_status(r.status, r.scheduled)},
          {"input", to_ordered(r.input)},
          {"output", r.output ? to_ordered(*r.output) : json(nullptr)},
          {"error", r.error ? json(*r.error) : json(nullptr)},
          {"created_at", iso_time(r.created_at)},
          {"finished_at", r.finished_at ? json(iso_time(*r.finished_at)) : json(nullptr)},
          {"retry_of", r.retry_of ? json(*r.retry_of) : json(nullptr)},
          {"start_at", r.start_at ? json(iso_time(*r.start_at)) : json(nullptr)},
          {"priority", r.priority ? json(*r.priority) : json(nullptr)},
          {"concurrency", run_concurrency_json(r)},
          {"parent", run_parent_json(r)},
          {"children", run_children_json(r)},
          {"children_total", r.children_total}};
}

std::string waiting_text(const detail::RunInfo& r) {
  if (!r.waiting) return {};
  const auto& w = *r.waiting;
  const std::string who = w.step.empty() ? std::string() : fmt::format("step '{}': ", w.step);
  // "": the default key (docs/flows.md#concurrency-limits), said so.
  const std::string key = w.key.empty()
                              ? std::string(
                                    "the default key \"\" (the run's input has no value at the "
                                    "limit's key, or the limit has none)")
                              : fmt::format("key {}", json(valid_text(w.key)).dump());
  const std::string rate = w.rate_limit > 0 ? fmt::format("rate limit {} per {}", w.rate_limit,
                                                          format_duration(Millis{w.rate_per_ms}))
                                            : std::string();
  if (w.limit > 0 && w.holding >= w.limit)
    return fmt::format("{}concurrency limit {} reached for {} ({} {}{} at once){}", who, w.limit,
                       key, w.limit, w.step.empty() ? "run" : "task", w.limit == 1 ? "" : "s",
                       w.rate_until ? fmt::format("; {} reached too", rate) : std::string());
  if (w.rate_until)
    return fmt::format("{}rate limited until {}: {} reached for {}", who,
                       iso_time_ms(*w.rate_until), rate, key);
  if (w.limit > 0)
    return fmt::format("{}queued for {} ({} of {} slots in use{})", who, key, w.holding, w.limit,
                       rate.empty() ? std::string() : ", " + rate);
  return fmt::format("{}queued for {} ({}, tokens left)", who, key, rate);
}

std::string concurrency_text(const Concurrency& c) {
  return c.key ? fmt::format("concurrency={} per {}", c.limit,
                             c.key->empty() ? std::string("\"\" (the whole input)") : *c.key)
               : fmt::format("concurrency={}", c.limit);
}

std::string rate_limit_text(const RateLimit& r) {
  const std::string base = fmt::format("rate_limit={} per {}", r.limit, format_duration(r.per));
  return r.key ? fmt::format("{} per {}", base,
                             r.key->empty() ? std::string("\"\" (the whole input)") : *r.key)
               : base;
}

namespace {
std::string retention_age_text(Millis age) {
  return age == Retention::kKeep ? std::string("keep") : format_duration_days(age);
}
}  // namespace

std::string retention_text(const Retention& r) {
  std::string out;
  const std::pair<const char*, const std::optional<Millis>*> ages[] = {
      {"completed", &r.completed}, {"failed", &r.failed}, {"cancelled", &r.cancelled}};
  for (const auto& [status, age] : ages)
    if (*age)
      out += fmt::format("{}{}={}", out.empty() ? "retention " : " ", status,
                         retention_age_text(**age));
  return out;
}

json retention_json(const Retention& r) {
  if (r.empty()) return nullptr;
  const auto age = [](const std::optional<Millis>& a) {
    return a ? json(retention_age_text(*a)) : json(nullptr);
  };
  return {
      {"completed", age(r.completed)}, {"failed", age(r.failed)}, {"cancelled", age(r.cancelled)}};
}

json rate_limit_json(const RateLimit& r) {
  json out{{"limit", r.limit}, {"per", format_duration(r.per)}};
  if (r.key) out["key"] = *r.key;
  return out;
}

std::string held_text(const detail::RunInfo& r) {
  if (!r.held_key) return {};
  return fmt::format("holds a slot of key {} of its flow's concurrency limit",
                     json(valid_text(*r.held_key)).dump());
}

std::string excerpt(std::string_view text, std::size_t max_bytes) {
  const std::string valid = valid_text(text);
  if (valid.size() <= max_bytes) return valid;
  return std::string(detail::utf8_prefix(valid, max_bytes)) + "\u2026";
}

json run_summary_json(const detail::RunSummary& r) {
  json duration = nullptr;
  if (r.finished_at)
    duration = std::chrono::duration_cast<std::chrono::milliseconds>(*r.finished_at - r.created_at)
                   .count();
  return {
      {"id", r.id},
      {"flow", r.flow_slug},
      {"version", r.flow_version},
      {"status", run_status(r.status, r.scheduled)},
      {"error", r.error ? json(excerpt(*r.error, kErrorExcerptBytes)) : json(nullptr)},
      {"created_at", iso_time(r.created_at)},
      {"finished_at", r.finished_at ? json(iso_time(*r.finished_at)) : json(nullptr)},
      {"duration_ms", std::move(duration)},
      {"retry_of", r.retry_of ? json(*r.retry_of) : json(nullptr)},
      {"idempotency_key", r.idempotency_key ? json(valid_text(*r.idempotency_key)) : json(nullptr)},
      {"input_stored_bytes", r.input_stored_bytes},
      {"output_stored_bytes", r.output_stored_bytes ? json(*r.output_stored_bytes) : json(nullptr)},
      {"start_at", r.start_at ? json(iso_time(*r.start_at)) : json(nullptr)}};
}

json options_json(const Options& o) {
  return {{"max_attempts", o.max_attempts},
          {"base_delay", format_duration(o.base_delay)},
          {"max_delay", format_duration(o.max_delay)},
          {"timeout", format_duration(o.timeout)},
          {"priority", o.priority}};
}

json sleep_json(const Sleep& s) {
  if (s.duration) return {{"duration", format_duration_days(*s.duration)}};
  return {{"until", s.until.value_or("")}};
}

std::string sleep_text(const Sleep& s) {
  return s.duration ? "sleep " + format_duration_days(*s.duration)
                    : "sleep until the time at " + s.until.value_or("") + " of its input";
}

json wait_json(const Wait& w) {
  json out = json::object();
  if (w.signal) out["signal"] = *w.signal;
  if (w.event) {
    out["event"] = *w.event;
    json match = json::object();
    for (const auto& [at, from] : w.match) match[at] = from;
    out["match"] = std::move(match);
  }
  out["timeout"] = w.timeout ? json(format_duration_days(*w.timeout)) : json(nullptr);
  out["default"] = w.default_output ? to_ordered(*w.default_output) : json(nullptr);
  return out;
}

std::string wait_text(const Wait& w) {
  std::string text = w.signal ? fmt::format("wait for signal '{}'", *w.signal)
                              : fmt::format("wait for event '{}'", w.event.value_or(""));
  std::vector<std::string> pairs;
  for (const auto& [at, from] : w.match)
    pairs.push_back(shown_pointer(at) + " = " + shown_pointer(from));
  if (!pairs.empty()) text += fmt::format(" where {}", fmt::join(pairs, " and "));
  if (w.timeout)
    text += fmt::format(", {} after {}", w.default_output ? "default output" : "failing",
                        format_duration_days(*w.timeout));
  return text;
}

std::string child_text(const Child& c) {
  return fmt::format("starts flow {}{}", c.flow, c.map ? " per element" : "");
}

std::string condition_suffix(const StepDef& s) {
  std::string text;
  if (s.when) text += "  when " + condition_text(*s.when);
  if (s.trigger == Trigger::any) text += "  (trigger any)";
  return text;
}

json flow_json(const RegisteredFlow& registered) {
  const FlowDef& flow = registered.def;
  json steps = json::array();
  for (const auto& s : flow.steps)
    steps.push_back(
        {{"slug", s.slug},
         {"kind", to_string(s.kind)},
         {"depends_on", s.depends_on},
         {"handler", s.handler},
         {"options", options_json(flow.step_options(s))},
         {"concurrency",
          s.concurrency ? to_ordered(detail::concurrency_json(*s.concurrency)) : json(nullptr)},
         {"rate_limit", s.rate_limit ? rate_limit_json(*s.rate_limit) : json(nullptr)},
         {"sleep", s.sleep ? sleep_json(*s.sleep) : json(nullptr)},
         {"wait", s.wait ? wait_json(*s.wait) : json(nullptr)},
         {"when", s.when ? to_ordered(*s.when) : json(nullptr)},
         {"trigger", to_string(s.trigger)},
         {"flow", s.child ? json(s.child->flow) : json(nullptr)},
         {"map", s.child && s.child->map}});
  return {{"slug", flow.slug},
          {"module", flow.module},
          {"version", flow_version(flow)},
          {"description", flow.description},
          {"source", flow.source.empty() ? json(nullptr) : json(valid_text(flow.source))},
          {"options", options_json(flow.options)},
          {"input_schema", flow.input_schema ? to_ordered(*flow.input_schema) : json(nullptr)},
          {"concurrency", flow.concurrency ? to_ordered(detail::concurrency_json(*flow.concurrency))
                                           : json(nullptr)},
          {"rate_limit", flow.rate_limit ? rate_limit_json(*flow.rate_limit) : json(nullptr)},
          {"retention", retention_json(flow.retention)},
          {"steps", std::move(steps)}};
}

json step_json(const detail::StepInfo& s) {
  return {{"slug", s.slug},
          {"kind", s.kind},
          {"status", s.status},
          {"tasks", s.task_count},
          {"attempts", s.attempts},
          {"worker", s.worker ? json(*s.worker) : json(nullptr)},
          {"started_at", s.started_at ? json(iso_time(*s.started_at)) : json(nullptr)},
          {"finished_at", s.finished_at ? json(iso_time(*s.finished_at)) : json(nullptr)},
          {"error", s.error ? json(*s.error) : json(nullptr)},
          {"output", s.output ? to_ordered(*s.output) : json(nullptr)},
          {"waits_until", s.waits_until ? json(iso_time_ms(*s.waits_until)) : json(nullptr)},
          {"snoozes", s.snoozes},
          {"waits_for", s.waits_for ? to_ordered(*s.waits_for) : json(nullptr)}};
}

std::string waits_for_text(const json& waits_for) {
  if (!waits_for.is_object()) return "";
  if (waits_for.contains("signal") && waits_for["signal"].is_string())
    return fmt::format("signal '{}'", waits_for["signal"].get<std::string>());
  if (!waits_for.contains("event") || !waits_for["event"].is_string()) return "";
  std::string text = fmt::format("event '{}'", waits_for["event"].get<std::string>());
  std::vector<std::string> pairs;
  if (waits_for.contains("match") && waits_for["match"].is_object())
    for (const auto& [at, value] : waits_for["match"].items())
      pairs.push_back(at + " = " + excerpt(value.dump(), 100));
  if (!pairs.empty()) text += fmt::format(" where {}", fmt::join(pairs, " and "));
  return text;
}

std::string step_wait_text(const detail::StepInfo& s) {
  if (s.kind == "wait" && s.status == "started" && s.waits_for) {
    std::string text = "waiting for " + waits_for_text(*s.waits_for);
    if (s.waits_until) text += ", times out at " + iso_time_ms(*s.waits_until);
    return text;
  }
  if (!s.waits_until) return s.snoozes > 0 ? fmt::format("snoozed {}x", s.snoozes) : "";
  const std::string until = iso_time_ms(*s.waits_until);
  if (s.kind == "sleep") return "sleeping until " + until;
  if (s.snoozes > 0) return fmt::format("snoozed ({}x) until {}", s.snoozes, until);
  return "next attempt at " + until;
}

std::string iso_time_ms(const detail::TimePoint& t) {
  const auto ms = std::chrono::floor<std::chrono::milliseconds>(t);
  const auto s = std::chrono::floor<std::chrono::seconds>(ms);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", s, (ms - s).count());
}

namespace {

// A signal's name ("SIGKILL"), or null for a number that names none.
json signal_name_json(int signal) {
  const char* abbrev = ::sigabbrev_np(signal);
  return abbrev ? json(fmt::format("SIG{}", abbrev)) : json(nullptr);
}

}  // namespace

json attempt_json(const detail::AttemptRecord& a) {
  json duration = nullptr;
  if (a.started_at && a.finished_at)
    duration = std::chrono::duration_cast<std::chrono::milliseconds>(*a.finished_at - *a.started_at)
                   .count();
  return {{"step", a.step_slug},
          {"task", a.task_index},
          {"attempt", a.attempt},
          {"outcome", a.outcome},
          {"worker", a.worker ? json(valid_text(*a.worker)) : json(nullptr)},
          {"started_at", a.started_at ? json(iso_time_ms(*a.started_at)) : json(nullptr)},
          {"finished_at", a.finished_at ? json(iso_time_ms(*a.finished_at)) : json(nullptr)},
          {"duration_ms", duration},
          {"error", a.error ? json(excerpt(*a.error, kAttemptErrorBytes)) : json(nullptr)},
          {"process", a.process ? task_process_json(*a.process) : json(nullptr)}};
}

json task_process_json(const detail::TaskProcess& p) {
  return {{"pid", p.pid},
          {"cpu_us", p.cpu_us},
          {"max_rss_kb", p.max_rss_kb},
          {"handler_us", p.handler_us},
          {"signal", p.signal ? json(*p.signal) : json(nullptr)},
          {"signal_name", p.signal ? signal_name_json(*p.signal) : json(nullptr)},
          {"exit_status", p.exit_status ? json(*p.exit_status) : json(nullptr)},
          {"left_processes", p.left_processes}};
}

std::string task_process_text(const json& p) {
  if (!p.is_object()) return "";
  const auto n = [&](const char* key) {
    return p.contains(key) && p[key].is_number_integer() ? p[key].get<std::int64_t>() : 0;
  };
  std::string out = fmt::format("pid {}, CPU {:.2f} ms, handler {:.2f} ms, peak RSS {:.1f} MiB",
                                n("pid"), static_cast<double>(n("cpu_us")) / 1e3,
                                static_cast<double>(n("handler_us")) / 1e3,
                                static_cast<double>(n("max_rss_kb")) / 1024.0);
  if (p.contains("signal") && p["signal"].is_number_integer())
    out += fmt::format(", ended by signal {}{}", n("signal"),
                       p.contains("signal_name") && p["signal_name"].is_string()
                           ? fmt::format(" ({})", valid_text(p["signal_name"].get<std::string>()))
                           : std::string());
  if (p.contains("exit_status") && p["exit_status"].is_number_integer())
    out += fmt::format(", exited with status {}", n("exit_status"));
  if (n("left_processes") > 0)
    out += fmt::format(", {} process{} it started killed with it", n("left_processes"),
                       n("left_processes") == 1 ? "" : "es");
  return out;
}

json plugin_json(const PluginInfo& p) {
  return {{"file", valid_text(p.file.string())},
          {"module", p.module.empty() ? json(nullptr) : json(p.module)},
          {"sha256", p.sha256.empty() ? json(nullptr) : json(p.sha256)},
          {"abi", p.abi.empty() ? json(nullptr) : json(p.abi)},
          {"fingerprint", p.fingerprint.empty() ? json(nullptr) : json(p.fingerprint)},
          {"status", to_string(p.status)},
          {"error", p.error ? plugin_error_json(*p.error) : json(nullptr)},
          {"flows", p.flows},
          {"handlers", p.handlers}};
}

std::string worker_status(const detail::WorkerRecord& w) {
  // Liveness from the heartbeat's age (by the server's clock): a worker that missed
  // kStaleAfter heartbeats in a row is stale (killed, frozen, or cut off from the database).
  static constexpr int kStaleAfter = 3;
  if (w.stopped_at) return "stopped";
  const Millis every = w.heartbeat_interval.value_or(Millis(5'000));
  if (w.heartbeat_age > every * kStaleAfter) return "stale";
  if (w.state == "stuck" || w.state == "replacing") return w.state;
  return "running";
}

namespace {

// A worker's handler processes as its heartbeat stored them: the known counts only, each a
// non-negative integer (0 when the row says otherwise), in a fixed order.
json handler_processes_json(const std::optional<detail::Json>& stored) {
  if (!stored || !stored->is_object()) return nullptr;
  json out = json::object();
  for (const char* key :
       {"alive", "busy", "started", "crashed", "timed_out", "killed_by_limit", "broken"}) {
    const auto it = stored->find(key);
    out[key] = it != stored->end() && it->is_number_unsigned() ? it->get<std::uint64_t>()
               : it != stored->end() && it->is_number_integer()
                   ? static_cast<std::uint64_t>(std::max<std::int64_t>(0, it->get<std::int64_t>()))
                   : std::uint64_t{0};
  }
  return out;
}

}  // namespace

std::string handler_processes_text(const json& processes) {
  if (!processes.is_object()) return "";
  const auto n = [&](const char* key) { return processes.value(key, std::uint64_t{0}); };
  return fmt::format(
      "{} alive ({} busy); {} started, {} crashed, {} timed out, {} killed by a limit, {} broken",
      n("alive"), n("busy"), n("started"), n("crashed"), n("timed_out"), n("killed_by_limit"),
      n("broken"));
}

json worker_json(const detail::WorkerRecord& w) {
  json flows = json::array();
  for (const auto& f : w.flows) flows.push_back({{"slug", f.slug}, {"version", f.version}});
  return {{"id", w.id},
          {"host", w.host},
          {"pid", w.pid},
          {"concurrency", w.concurrency},
          {"flows", flows},
          {"status", worker_status(w)},
          {"stopped", w.stopped_at.has_value()},
          {"last_heartbeat_ms_ago", w.heartbeat_age.count()},
          {"held", w.held},
          {"heartbeat_interval_ms",
           w.heartbeat_interval ? json(w.heartbeat_interval->count()) : json(nullptr)},
          {"handler_processes", handler_processes_json(w.handler_processes)}};
}

}  // namespace flowreg::app
