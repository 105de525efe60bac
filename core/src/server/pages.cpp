// The dashboard's pages: HTML rendered by dashboard.cpp from the API's JSON forms; a failure is
// the dashboard's error page, not a problem+json.

#include <fmt/format.h>

#include <charconv>
#include <chrono>

#include "app/forms.hpp"
#include "app/health.hpp"
#include "app/schedules.hpp"
#include "server/dashboard.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

namespace {

// The attempts a run page lists at once, and the furthest page it shows.
constexpr int kRunPageAttempts = 100;
constexpr int kMaxRunPageAttemptsOffset = 10'000'000;
// The schedules the dashboard's list shows (the first by name), and a flow's page.
constexpr int kSchedulesShown = 1000;
constexpr int kFlowSchedulesShown = 100;

// The schedules of `flow` ("" for all), the first `limit` by name, as the API shows them, in
// out["schedules"] with out["schedules_more"] when there are more; out["schedules_error"] when
// they cannot be read.
void schedules_into(ServerState& state, const std::string& flow, int limit, app::json& out) {
  auto listed = state.stores.with(
      [&](RunStore& store) { return store.list_schedules_page(flow, limit + 1); });
  if (!listed) {
    out["schedules_error"] = listed.error().message;
    return;
  }
  const auto now = std::chrono::system_clock::now();
  app::json list = app::json::array();
  for (const auto& s : *listed)
    if (static_cast<int>(list.size()) < limit) list.push_back(app::schedule_json(s, now));
  out["schedules_more"] = static_cast<int>(listed->size()) > limit;
  out["schedules"] = std::move(list);
}

// A schedule's button (POST /schedules/{name}/{action}): does it, then sends the browser back to
// the list (or, with ?back=page, to the schedule's page) with a notice of what it did.
void schedule_action(ServerState& state, const http::Request& req, http::Response& res) {
  const std::string name = app::valid_text(req.matches[1].str());
  const std::string action = req.matches[2];
  std::string done, run;
  Result<void> ok;
  if (action == "pause" || action == "resume") {
    ok = state.stores.with(
        [&](RunStore& store) { return app::pause_schedule(store, name, action == "pause"); });
    done = action == "pause" ? "paused" : "resumed";
  } else if (action == "trigger") {
    auto started = state.stores.with([&](RunStore& store) {
      return app::trigger_schedule(store, *state.options.registry, name);
    });
    if (started)
      run = started->id;
    else
      ok = tl::unexpected(started.error());
    done = "triggered";
  } else {
    auto deleted = state.stores.with([&](RunStore& store) { return store.delete_schedule(name); });
    if (!deleted)
      ok = tl::unexpected(deleted.error());
    else if (!*deleted)
      ok = make_error(Errc::not_found, fmt::format("no schedule named '{}'", name));
    done = "deleted";
  }
  if (!ok) return http::html_error(res, http::status_of(ok.error()), ok.error().message);
  const std::string query = "?done=" + done + "&schedule=" + http::percent_encode(name) +
                            (run.empty() ? "" : "&run=" + http::percent_encode(run));
  res.status = 303;
  res.set_header("Cache-Control", "no-store");
  res.set_header("Location",
                 req.get_param_value("back") == "page" && action != "delete"
                     ? "/schedules/" + http::percent_encode(name) + query
                     : "/schedules" + query + "#schedule-" + http::percent_encode(name));
}

// The notice of the action a page was sent back from (?done=&schedule=&run=), as HTML.
std::string notice_of(const http::Request& req) {
  if (!req.has_param("done")) return {};
  std::string run = req.get_param_value("run");
  if (!http::is_uuid(run)) run.clear();
  return dashboard::schedule_notice(req.get_param_value("done"),
                                    app::valid_text(req.get_param_value("schedule").substr(0, 200)),
                                    run);
}

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
    // The database's warnings (what holds VACUUM back, a failed retention round), when it answers.
    auto health = state.stores.with([](RunStore& store) { return app::db_health(store); });
    res.set_content(dashboard::flows_page(state.flows_json(), recent, runs_error,
                                          health ? health->body["warnings"] : json(nullptr)),
                    kHtml);
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
    json shown = app::flow_json(*flow);
    schedules_into(state, flow->def.slug, kFlowSchedulesShown, shown);
    res.set_content(dashboard::flow_page(shown, list, runs_error), kHtml);
  });
  h.Get("/schedules", [&state](const Request& req, Response& res) {
    json read;
    schedules_into(state, "", kSchedulesShown, read);
    if (read.contains("schedules_error"))
      return html_error(
          res, 503, "The schedules cannot be read: " + read["schedules_error"].get<std::string>());
    res.set_content(
        dashboard::schedules_page(read["schedules"], read["schedules_more"], notice_of(req)),
        kHtml);
  });
  h.Get(R"(/schedules/([^/]+))", [&state](const Request& req, Response& res) {
    const std::string name = app::valid_text(req.matches[1].str());
    auto found = state.stores.with([&](RunStore& store) { return store.list_schedules(name); });
    if (!found) return html_error(res, http::status_of(found.error()), found.error().message);
    if (found->empty()) return html_error(res, 404, fmt::format("no schedule named '{}'", name));
    res.set_content(
        dashboard::schedule_page(
            app::schedule_json(found->front(), std::chrono::system_clock::now()), notice_of(req)),
        kHtml);
  });
  h.Post(R"(/schedules/([^/]+)/(pause|resume|trigger|delete))",
         [&state](const Request& req, Response& res) { schedule_action(state, req, res); });
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
    auto health = state.stores.with([](RunStore& store) { return app::db_health(store); });
    res.set_content(
        dashboard::workers_page(out, health ? health->body : json(health.error().message)), kHtml);
  });
  h.Get("/plugins", [&state](const Request&, Response& res) {
    res.set_content(dashboard::plugins_page(plugins_json(state)), kHtml);
  });
}

}  // namespace flowreg::detail
