// The parts of one run that its page shows beside its steps: its DAG drawn with each step's state,
// and a step's tasks, a page at a time (a map step may have thousands).

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <charconv>
#include <map>

#include "app/forms.hpp"
#include "app/graph_svg.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

namespace {

using app::json;
using http::problem;
using http::Request;
using http::Response;

// A time as ISO 8601 in UTC to the millisecond ("2026-01-02T03:04:05.678Z").
std::string iso_time_ms(const TimePoint& t) {
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::milliseconds>(t));
}

json opt_ms(const std::optional<TimePoint>& t) { return t ? json(iso_time_ms(*t)) : json(nullptr); }

// A query parameter as an integer in [low, high]; `fallback` when absent or empty; nullopt when
// it is not such a number.
std::optional<int> int_param(const Request& req, const char* name, int fallback, int low,
                             int high) {
  if (!req.has_param(name) || req.get_param_value(name).empty()) return fallback;
  const std::string text = req.get_param_value(name);
  int n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || n < low || n > high)
    return std::nullopt;
  return n;
}

}  // namespace

Result<json> step_tasks_page(ServerState& state, const std::string& id, const std::string& step,
                             int offset, int limit) {
  return state.stores.with([&](RunStore& store) -> Result<json> {
    auto steps = store.run_steps(id);
    if (!steps) return tl::unexpected(std::move(steps.error()));
    if (steps->empty()) return make_error(Errc::not_found, fmt::format("no run {}", id));
    const StepInfo* found = nullptr;
    for (const auto& s : *steps)
      if (s.slug == step) found = &s;
    if (!found)
      return make_error(Errc::not_found,
                        fmt::format("run {} has no step '{}'", id, app::valid_text(step)));
    // One more than asked: whether there is a next page, and where it starts.
    auto rows = store.step_tasks(id, step, offset, limit + 1);
    if (!rows) return tl::unexpected(std::move(rows.error()));
    json next = nullptr;
    if (static_cast<int>(rows->size()) > limit) {
      next = (*rows)[static_cast<std::size_t>(limit)].index;
      rows->resize(static_cast<std::size_t>(limit));
    }
    json tasks = json::array();
    for (const auto& t : *rows)
      tasks.push_back(
          {{"index", t.index},
           {"status", t.status},
           {"attempt", t.attempt},
           {"worker", t.worker ? json(app::valid_text(*t.worker)) : json(nullptr)},
           {"started_at", opt_ms(t.started_at)},
           {"finished_at", opt_ms(t.finished_at)},
           // A queued task with an error waits for its next attempt, from available_at on.
           {"next_attempt_at",
            t.status == "queued" && t.error ? json(iso_time_ms(t.available_at)) : json(nullptr)},
           {"error",
            t.error ? json(app::excerpt(*t.error, app::kErrorExcerptBytes)) : json(nullptr)}});
    return json{{"run", id},
                {"step", found->slug},
                {"kind", found->kind},
                {"status", found->status},
                {"task_count", found->task_count},
                {"offset", offset},
                {"limit", limit},
                {"next_offset", next},
                {"previous_offset", offset > 0 ? json(std::max(0, offset - limit)) : json(nullptr)},
                {"tasks", std::move(tasks)}};
  });
}

std::optional<std::pair<int, int>> task_page_params(const Request& req, int default_limit) {
  const auto offset = int_param(req, "offset", 0, 0, kMaxTaskIndex);
  const auto limit = int_param(req, "limit", default_limit, 1, kMaxTasksLimit);
  if (!offset || !limit) return std::nullopt;
  return std::pair{*offset, *limit};
}

void register_run_detail_routes(http::Router& h, ServerState& state) {
  h.Get(R"(/api/v1/runs/([^/]+)/graph\.svg)", [&state](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    FlowDef flow;
    std::map<std::string, std::string> states;
    std::string key;
    auto read = state.stores.with([&](RunStore& store) -> Result<void> {
      // The run's flow and steps, never its input or output (which may be large).
      auto graph = store.run_graph(id);
      if (!graph) return tl::unexpected(std::move(graph.error()));
      if (!*graph) return make_error(Errc::not_found, fmt::format("no run {}", id));
      auto steps = store.run_steps(id);
      if (!steps) return tl::unexpected(std::move(steps.error()));
      flow.slug = app::valid_text((*graph)->flow_slug);
      for (const auto& g : (*graph)->steps) {
        StepDef s;
        s.slug = app::valid_text(g.slug);
        s.kind = parse_step_kind(g.kind).value_or(StepKind::single);
        // A map over a child flow (migration 0028's kind flow_map).
        if (g.kind == "flow_map") s.kind = StepKind::flow;
        if (s.kind == StepKind::flow)
          s.child = Child{app::valid_text(g.child_flow), g.kind == "flow_map"};
        s.handler = app::valid_text(g.handler);
        for (const auto& d : g.depends_on) s.depends_on.push_back(app::valid_text(d));
        flow.steps.push_back(std::move(s));
      }
      // The drawing is kept per run and states: a run's picture changes only when a step does.
      key = "run " + id;
      for (const auto& s : *steps) {
        states[app::valid_text(s.slug)] = s.status;
        key += " " + s.status;
      }
      return {};
    });
    if (!read) return http::send_error(res, read.error());
    std::string svg = state.svgs.find(key);
    if (svg.empty()) {
      auto drawn = run_svg(flow, states);
      if (!drawn)
        return problem(res, drawn.error().code == Errc::invalid_argument ? 422 : 500,
                       drawn.error().message);
      svg = std::move(*drawn);
      state.svgs.put(key, svg);
    }
    res.set_content(svg, "image/svg+xml");
  });
  h.Get(R"(/api/v1/runs/([^/]+)/steps/([^/]+)/tasks)", [&state](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!http::is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    const auto page = task_page_params(req, kDefaultTasksLimit);
    if (!page)
      return problem(res, 400,
                     fmt::format("offset must be a task index from 0 to {}, limit a number from "
                                 "1 to {}",
                                 kMaxTaskIndex, kMaxTasksLimit));
    auto tasks = step_tasks_page(state, id, req.matches[2], page->first, page->second);
    if (!tasks) return http::send_error(res, tasks.error());
    http::send_json(res, *tasks);
  });
}

}  // namespace flowreg::detail
