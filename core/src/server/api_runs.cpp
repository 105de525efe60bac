// The runs of the JSON API: starting one, the list, one run with its steps, cancel, retry and
// signals, and events; and the list's query, which the dashboard's /runs page reads the same way.

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <optional>

#include "app/forms.hpp"
#include "app/runs.hpp"
#include "server/dashboard.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

namespace {

using app::json;
using http::problem;
using http::Request;
using http::Response;

constexpr int kMaxListLimit = 1000;
// The most runs a list counts: a count of a long history would read all of it.
constexpr int kMaxCounted = 10'000;
// The longest text searched for in inputs.
constexpr std::size_t kMaxSearchText = 200;
// A page of attempts: at most kMaxAttemptsLimit, from at most the kMaxAttemptsOffset-th; a step
// slug of at most kMaxStepParamBytes bytes.
constexpr int kMaxAttemptsLimit = 1000;
constexpr int kMaxAttemptsOffset = 10'000'000;
constexpr std::size_t kMaxStepParamBytes = 200;

// The data and idempotency key of a signal or an event (its name in req.matches[name_at]), or
// false after answering the problem: 400 for a bad name, key or JSON, 413 for too much, 415 for
// another type.
bool wait_request(const Request& req, Response& res, std::size_t name_at, std::string_view what,
                  json& data, std::optional<std::string>& key) {
  if (auto named = app::check_wait_name(req.matches[name_at].str(), what); !named) {
    problem(res, 400, named.error().message);
    return false;
  }
  const std::string type = req.get_header_value("Content-Type");
  if (!req.body.empty() && !type.empty() && !type.starts_with("application/json")) {
    problem(res, 415,
            fmt::format("the data must be application/json, not '{}'", app::valid_text(type)));
    return false;
  }
  auto checked = app::check_wait_data(req.body, "the data");
  if (!checked) {
    const bool large = req.body.size() > app::kMaxWaitDataBytes;
    problem(res, large ? 413 : 400, checked.error().message, checked.error().details);
    return false;
  }
  auto k = app::check_idempotency_key(req.get_header_value("Idempotency-Key"));
  if (!k) {
    problem(res, 400, "Idempotency-Key is longer than 255 bytes");
    return false;
  }
  data = std::move(*checked);
  key = std::move(*k);
  return true;
}

void post_run(ServerState& state, const Request& req, Response& res) {
  const std::string slug = req.matches[1];
  const FlowRef flow = state.options.registry->get(slug);
  if (!flow) return problem(res, 404, fmt::format("no flow with slug '{}'", app::valid_text(slug)));
  const std::string type = req.get_header_value("Content-Type");
  if (!req.body.empty() && !type.empty() && !type.starts_with("application/json"))
    return problem(
        res, 415,
        fmt::format("the input must be application/json, not '{}'", app::valid_text(type)));
  auto input = app::check_input(req.body.empty() ? std::string_view("{}") : req.body, flow->def,
                                "the input");
  if (!input) {
    // Malformed JSON: 400; valid JSON the flow's input schema refuses: 422.
    const int status = input.error().code == Errc::parse ? 400 : 422;
    return problem(res, status, input.error().message, input.error().details);
  }
  StartOptions start;
  auto key = app::check_idempotency_key(req.get_header_value("Idempotency-Key"));
  if (!key) return problem(res, 400, "Idempotency-Key is longer than 255 bytes");
  start.idempotency_key = std::move(*key);
  // A delayed start: ?run_at=RFC 3339 or ?delay=DURATION (the body is the input).
  auto start_at = app::start_time(req.get_param_value("run_at"), req.get_param_value("delay"),
                                  std::chrono::system_clock::now(), "run_at", "delay");
  if (!start_at) return problem(res, 400, start_at.error().message);
  start.start_at = *start_at;
  // ?priority=N: the run's own priority (-100..100).
  auto priority = app::check_priority(req.get_param_value("priority"), "priority");
  if (!priority) return problem(res, 400, priority.error().message);
  start.priority = *priority;
  auto run = state.stores.with(
      [&](RunStore& store) { return app::start_run(store, *flow, *input, start); });
  if (!run) {
    // A key used again with another input: the store refuses it (invalid_argument).
    return http::send_error(res, run.error());
  }
  res.set_header("Location", "/api/v1/runs/" + run->id);
  http::send_json(res, app::run_json(*run), 201);
}

// GET /api/v1/runs/{id}/input and /output: one value of a run, whole, as JSON (null while the
// run has no output). The lists and the run's page show them in part; this is where they link.
void send_run_value(ServerState& state, const std::string& id, const std::string& which,
                    Response& res) {
  if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
  auto info = state.stores.with([&](RunStore& store) { return store.get_run(id); });
  if (!info) return http::send_error(res, info.error());
  if (!*info) return problem(res, 404, fmt::format("no run {}", id));
  const RunInfo& run = **info;
  if (which == "input") return http::send_json(res, app::to_ordered(run.input));
  http::send_json(res, run.output ? app::to_ordered(*run.output) : json(nullptr));
}

}  // namespace

Result<json> ServerState::run_with_steps(const std::string& id) {
  return stores.with([&](RunStore& store) -> Result<json> {
    auto info = store.get_run(id);
    if (!info) return tl::unexpected(std::move(info.error()));
    if (!*info) return make_error(Errc::not_found, fmt::format("no run {}", id));
    auto steps = store.run_steps(id);
    if (!steps) return tl::unexpected(std::move(steps.error()));
    // A step waiting for its next attempt says when, and why the last one failed.
    std::vector<StepRetry> retries;
    if ((*info)->status == RunStatus::started) {
      auto waiting = store.step_retries(id);
      if (!waiting) return tl::unexpected(std::move(waiting.error()));
      retries = std::move(*waiting);
    }
    json out = app::run_json(**info);
    out["steps"] = json::array();
    for (const auto& s : *steps) {
      json step = app::step_json(s);
      step["next_attempt_at"] = nullptr;
      step["failed_attempt"] = nullptr;
      step["last_error"] = nullptr;
      for (const auto& r : retries)
        if (r.step_slug == s.slug && s.status != "completed" && s.status != "failed" &&
            s.status != "cancelled") {
          step["next_attempt_at"] = app::iso_time(r.next_attempt_at);
          step["failed_attempt"] = r.failed_attempt;
          step["last_error"] = app::excerpt(r.error, app::kErrorExcerptBytes);
        }
      out["steps"].push_back(std::move(step));
    }
    return out;
  });
}

Result<json> ServerState::run_attempts(const std::string& id, const std::string& step, int limit,
                                       int offset) {
  return stores.with([&](RunStore& store) -> Result<json> {
    auto page = store.task_attempts(id, step, limit, offset);
    if (!page) return tl::unexpected(std::move(page.error()));
    // Every run has at least one step, so no attempt listed may mean no run.
    if (page->total == 0) {
      auto info = store.get_run(id);
      if (!info) return tl::unexpected(std::move(info.error()));
      if (!*info) return make_error(Errc::not_found, fmt::format("no run {}", id));
    }
    json list = json::array();
    for (const auto& a : page->attempts) list.push_back(app::attempt_json(a));
    const std::int64_t next = static_cast<std::int64_t>(offset) + std::ssize(page->attempts);
    return json{
        {"run", id},
        {"step", step.empty() ? json(nullptr) : json(step)},
        {"total", page->total},
        {"offset", offset},
        {"limit", limit},
        {"next_offset", next < page->total && !page->attempts.empty() ? json(next) : json(nullptr)},
        {"attempts", std::move(list)}};
  });
}

namespace {

// GET /api/v1/runs/{id}/attempts?step=&limit=&offset=: every attempt of the run's tasks, paged.
void get_attempts(ServerState& state, const Request& req, Response& res) {
  const std::string id = req.matches[1];
  if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
  std::string step;
  if (req.has_param("step")) {
    step = req.get_param_value("step");
    if (step.size() > kMaxStepParamBytes)
      return problem(res, 400, fmt::format("step is longer than {} bytes", kMaxStepParamBytes));
    step = app::valid_text(step);
  }
  const auto number = [&](std::string_view name, int low, int high,
                          int fallback) -> std::optional<int> {
    if (!req.has_param(name)) return fallback;
    const std::string v = req.get_param_value(name);
    int n = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || end != v.data() + v.size() || n < low || n > high) {
      problem(res, 400,
              fmt::format("{} '{}' is not a number from {} to {}", name, app::valid_text(v), low,
                          high));
      return std::nullopt;
    }
    return n;
  };
  const auto limit = number("limit", 1, kMaxAttemptsLimit, 100);
  if (!limit) return;
  const auto offset = number("offset", 0, kMaxAttemptsOffset, 0);
  if (!offset) return;
  auto page = state.run_attempts(id, step, *limit, *offset);
  if (!page) return http::send_error(res, page.error());
  http::send_json(res, *page);
}

}  // namespace

void list_runs(ServerState& state, const Request& req, Response& res, bool html) {
  RunFilter filter;
  std::optional<RunCursor> cursor;
  json given = {{"flow", ""},  {"status", ""}, {"id", ""},  {"key", ""},
                {"since", ""}, {"until", ""},  {"text", ""}};
  const auto fail = [&](int status, std::string message) {
    if (html) {
      http::html_error(res, status, message);
    } else {
      problem(res, status, message);
    }
  };
  if (req.has_param("flow") && !req.get_param_value("flow").empty()) {
    filter.flow_slug = app::valid_text(req.get_param_value("flow"));
    given["flow"] = *filter.flow_slug;
  }
  if (req.has_param("status") && !req.get_param_value("status").empty()) {
    const std::string s = req.get_param_value("status");
    // scheduled: the delayed runs whose time is ahead (stored as started).
    filter.scheduled = s == "scheduled";
    if (!filter.scheduled) filter.status = parse_run_status(s);
    if (!filter.scheduled && !filter.status)
      return fail(400,
                  fmt::format("status '{}' is not one of scheduled, started, completed, failed, "
                              "cancelled",
                              app::valid_text(s)));
    given["status"] = s;
  }
  filter.limit = html ? 50 : 100;
  if (req.has_param("limit")) {
    const std::string l = req.get_param_value("limit");
    int n = 0;
    const auto [end, ec] = std::from_chars(l.data(), l.data() + l.size(), n);
    if (ec != std::errc() || end != l.data() + l.size() || n < 1 || n > kMaxListLimit)
      return fail(400, fmt::format("limit '{}' is not a number from 1 to {}", app::valid_text(l),
                                   kMaxListLimit));
    filter.limit = n;
  }
  // A search by run id or by idempotency key: the runs that match, on one page.
  RunSearch search;
  if (req.has_param("id") && !req.get_param_value("id").empty()) {
    const std::string id = req.get_param_value("id");
    if (!http::is_uuid(id))
      return fail(400, fmt::format("id '{}' is not a run id", app::valid_text(id)));
    search.id = id;
    given["id"] = id;
  }
  if (req.has_param("key") && !req.get_param_value("key").empty()) {
    auto key = app::check_idempotency_key(req.get_param_value("key"));
    if (!key || !*key) return fail(400, "key is longer than 255 bytes");
    search.idempotency_key = app::valid_text(**key);
    given["key"] = *search.idempotency_key;
  }
  const bool searching = search.id || search.idempotency_key;
  // A time range of creation, and text the input holds.
  const auto now = std::chrono::system_clock::now();
  for (const char* bound : {"since", "until"}) {
    if (!req.has_param(bound) || req.get_param_value(bound).empty()) continue;
    const std::string text = req.get_param_value(bound);
    auto t = app::parse_time(text, now);
    if (!t)
      return fail(400, fmt::format("{} '{}' is not a time (2026-01-02T03:04:05Z, 2026-01-02, or a "
                                   "duration ago such as 2h)",
                                   bound, app::excerpt(text, 64)));
    (std::string_view(bound) == "since" ? filter.since : filter.until) = *t;
    given[bound] = text;
  }
  if (req.has_param("text") && !req.get_param_value("text").empty()) {
    const std::string text = req.get_param_value("text");
    if (text.size() > kMaxSearchText)
      return fail(400, fmt::format("text is longer than {} bytes", kMaxSearchText));
    filter.input_text = app::valid_text(text);
    given["text"] = *filter.input_text;
    given["text_scan"] = RunFilter::kTextSearchScan;
    given["text_input_bytes"] = RunFilter::kTextSearchInputBytes;
  }
  // Paging: the runs after `before` (older), or those before `after` (newer).
  for (const char* side : {"before", "after"}) {
    if (!req.has_param(side) || req.get_param_value(side).empty()) continue;
    const std::string b = req.get_param_value(side);
    if (!http::is_uuid(b))
      return fail(400, fmt::format("{} '{}' is not a run id", side, app::valid_text(b)));
    if (cursor) return fail(400, "before and after: give one of them");
    cursor = RunCursor{b, std::string_view(side) == "after"};
  }
  // One more than asked: whether there is a next page.
  const int asked = filter.limit;
  filter.limit = asked + 1;
  // And how many runs match the filter, counted up to kMaxCounted (more: "more than").
  std::int64_t total = 0;
  auto runs = state.stores.with([&](RunStore& store) -> Result<std::vector<RunSummary>> {
    if (searching) {
      auto found = store.find_run_summaries(filter, search);
      if (found) total = static_cast<std::int64_t>(found->size());
      return found;
    }
    auto listed = store.list_run_summaries(filter, cursor);
    if (!listed) return listed;
    auto counted = store.count_runs(filter, kMaxCounted + 1);
    if (!counted) return tl::unexpected(std::move(counted.error()));
    total = *counted;
    return listed;
  });
  if (!runs) {
    if (html) return fail(http::status_of(runs.error()), runs.error().message);
    return http::send_error(res, runs.error());
  }
  // One more than asked came back when there is a page beyond: older runs for a list, newer
  // ones for a page of newer runs (read newest first, the extra one is the first).
  const bool newer = cursor && cursor->newer;
  const bool beyond = !searching && static_cast<int>(runs->size()) > asked;
  if (static_cast<int>(runs->size()) > asked) {
    if (newer) runs->erase(runs->begin());
    runs->resize(static_cast<std::size_t>(asked));
  }
  json list = json::array();
  for (const auto& r : *runs) list.push_back(app::run_summary_json(r));
  // Older runs: when the page is full, or after a page of newer runs (it came from older ones).
  const bool more = !runs->empty() && (newer ? true : beyond);
  const std::string next = more ? runs->back().id : std::string();
  // Newer runs: above any page reached through a cursor (a page of newer runs: when it was full).
  const bool has_newer = !runs->empty() && cursor && (newer ? beyond : true);
  const std::string prev = has_newer ? runs->front().id : std::string();
  const bool exact = total <= kMaxCounted;
  given["total"] = exact ? total : kMaxCounted;
  given["total_exact"] = exact;
  // The newest page of a list, not a search: runs started now would be listed on it.
  given["newest"] = !searching && !has_newer && !filter.until && !filter.input_text;
  if (html) {
    res.set_content(dashboard::runs_page(list, state.flows_json(), given, next, prev), http::kHtml);
    return;
  }
  http::send_json(res, {{"runs", std::move(list)},
                        {"next_before", more ? json(next) : json(nullptr)},
                        {"next_after", has_newer ? json(prev) : json(nullptr)},
                        {"total", exact ? total : kMaxCounted},
                        {"total_exact", exact}});
}

void register_run_routes(http::Router& h, ServerState& state) {
  h.Post(R"(/api/v1/flows/([^/]+)/runs)",
         [&state](const Request& req, Response& res) { post_run(state, req, res); });
  h.Get("/api/v1/runs",
        [&state](const Request& req, Response& res) { list_runs(state, req, res, false); });
  h.Get(R"(/api/v1/runs/([^/]+))", [&state](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    auto run = state.run_with_steps(id);
    if (!run) return http::send_error(res, run.error());
    http::send_json(res, *run);
  });
  h.Get(R"(/api/v1/runs/([^/]+)/attempts)",
        [&state](const Request& req, Response& res) { get_attempts(state, req, res); });
  h.Get(R"(/api/v1/runs/([^/]+)/(input|output))", [&state](const Request& req, Response& res) {
    send_run_value(state, req.matches[1], req.matches[2], res);
  });
  h.Post(R"(/api/v1/runs/([^/]+)/cancel)", [&state](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    auto cancelled = state.stores.with([&](RunStore& store) { return store.cancel_run(id); });
    if (!cancelled) return http::send_error(res, cancelled.error());
    if (!*cancelled)
      return problem(res, 409, fmt::format("run {} is not running (nothing to cancel)", id));
    http::send_json(res, {{"id", id}, {"status", "cancelled"}});
  });
  // A signal to a run's wait step (docs/flows.md#wait-steps): 200 delivered, kept or duplicate;
  // 404 no such run; 409 when the run takes no such signal now (the reason in the detail).
  h.Post(R"(/api/v1/runs/([^/]+)/signals/([^/]+))", [&state](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    json data;
    std::optional<std::string> key;
    if (!wait_request(req, res, 2, "signal", data, key)) return;
    const std::string name = req.matches[2];
    auto sent =
        state.stores.with([&](RunStore& store) { return store.send_signal(id, name, data, key); });
    if (!sent) return http::send_error(res, sent.error());
    http::send_json(res, app::signal_sent_json(id, name, *sent));
  });
  // An event: 200 with the number of wait steps it resumed (0 when none waits for it).
  h.Post(R"(/api/v1/events/([^/]+))", [&state](const Request& req, Response& res) {
    json data;
    std::optional<std::string> key;
    if (!wait_request(req, res, 1, "event", data, key)) return;
    const std::string name = req.matches[1];
    auto sent =
        state.stores.with([&](RunStore& store) { return store.send_event(name, data, key); });
    if (!sent) return http::send_error(res, sent.error());
    http::send_json(res, app::event_sent_json(name, *sent));
  });
  h.Post(R"(/api/v1/runs/([^/]+)/retry)", [&state](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    // ?from=failed: from the failed step, the completed steps' outputs kept.
    const auto from = app::parse_retry_from(req.get_param_value("from"));
    if (!from)
      return problem(res, 400,
                     fmt::format("from '{}' is not one of start, failed",
                                 app::valid_text(req.get_param_value("from"))));
    auto fresh = state.stores.with(
        [&](RunStore& store) -> Result<RunInfo> { return app::retry_run(store, id, *from); });
    if (!fresh) return http::send_error(res, fresh.error());
    res.set_header("Location", "/api/v1/runs/" + fresh->id);
    http::send_json(res, app::run_json(*fresh), 201);
  });
}

}  // namespace flowreg::detail
