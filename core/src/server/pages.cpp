// The dashboard's pages: HTML rendered by dashboard.cpp from the API's JSON forms; a failure is
// the dashboard's error page, not a problem+json.

#include <fmt/format.h>

#include <charconv>

#include "app/forms.hpp"
#include "server/dashboard.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

namespace {

// The attempts a run page lists at once, and the furthest page it shows.
constexpr int kRunPageAttempts = 100;
constexpr int kMaxRunPageAttemptsOffset = 10'000'000;

}  // namespace

void register_page_routes(http::Router& h, ServerState& state) {
  using app::json;
  using http::html_error;
  using http::kHtml;
  using http::Request;
  using http::Response;
  h.Get("/", [&state](const Request&, Response& res) {
    RunFilter recent_filter;
    recent_filter.limit = 200;
    auto runs =
        state.stores.with([&](RunStore& store) { return store.list_run_summaries(recent_filter); });
    json recent = json::array();
    // The flows come from memory: shown whatever the database says, with its error in place of
    // their runs (and its status: a probe must not read "no runs" as the database's answer).
    std::string runs_error;
    if (runs) {
      for (const auto& r : *runs) recent.push_back(app::run_summary_json(r));
    } else {
      res.status = http::status_of(runs.error());
      runs_error = runs.error().message;
    }
    res.set_content(dashboard::flows_page(state.flows_json(), recent, runs_error), kHtml);
  });
  h.Get(R"(/flows/([^/]+))", [&state](const Request& req, Response& res) {
    const FlowRef flow = state.options.registry->get(req.matches[1].str());
    if (!flow)
      return html_error(
          res, 404, fmt::format("no flow with slug '{}'", app::valid_text(req.matches[1].str())));
    RunFilter filter;
    filter.flow_slug = flow->def.slug;
    filter.limit = 20;
    auto runs =
        state.stores.with([&](RunStore& store) { return store.list_run_summaries(filter); });
    json list = json::array();
    std::string runs_error;
    if (runs) {
      for (const auto& r : *runs) list.push_back(app::run_summary_json(r));
    } else {
      res.status = http::status_of(runs.error());
      runs_error = runs.error().message;
    }
    res.set_content(dashboard::flow_page(app::flow_json(*flow), list, runs_error), kHtml);
  });
  h.Get("/runs", [&state](const Request& req, Response& res) { list_runs(state, req, res, true); });
  h.Get(R"(/runs/([^/]+))", [&state](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!http::is_uuid(id))
      return html_error(res, 404, fmt::format("no run {}", app::valid_text(id)));
    auto run = state.run_with_steps(id);
    if (!run) return html_error(res, http::status_of(run.error()), run.error().message);
    // ?step=SLUG&offset=N: a page of that step's tasks.
    json tasks;
    if (req.has_param("step") && !req.get_param_value("step").empty()) {
      const auto page = task_page_params(req, kDefaultTasksLimit);
      if (!page) return html_error(res, 400, "offset must be a task index from 0 on");
      auto read =
          step_tasks_page(state, id, req.get_param_value("step"), page->first, kDefaultTasksLimit);
      if (!read) return html_error(res, http::status_of(read.error()), read.error().message);
      tasks = std::move(*read);
    }
    // A page of its attempts: kRunPageAttempts from attempts_offset.
    int offset = 0;
    if (req.has_param("attempts_offset")) {
      const std::string o = req.get_param_value("attempts_offset");
      const auto [end, ec] = std::from_chars(o.data(), o.data() + o.size(), offset);
      if (ec != std::errc() || end != o.data() + o.size() || offset < 0 ||
          offset > kMaxRunPageAttemptsOffset)
        return html_error(res, 400,
                          fmt::format("attempts_offset '{}' is not a number from 0 to {}",
                                      app::valid_text(o), kMaxRunPageAttemptsOffset));
    }
    auto attempts = state.run_attempts(id, "", kRunPageAttempts, offset);
    if (!attempts)
      return html_error(res, http::status_of(attempts.error()), attempts.error().message);
    res.set_content(dashboard::run_page(*run, tasks, *attempts), kHtml);
  });
  h.Get("/workers", [&state](const Request&, Response& res) {
    auto workers = state.stores.with([](RunStore& store) { return store.list_workers(); });
    if (!workers) return html_error(res, http::status_of(workers.error()), workers.error().message);
    json out = json::array();
    for (const auto& w : *workers) out.push_back(app::worker_json(w));
    res.set_content(dashboard::workers_page(out), kHtml);
  });
  h.Get("/plugins", [&state](const Request&, Response& res) {
    res.set_content(dashboard::plugins_page(plugins_json(state)), kHtml);
  });
}

}  // namespace flowreg::detail
