// The schedules of the JSON API (docs/schedules.md): list, show, create or replace, pause,
// resume, trigger and delete. The same app layer as `flowreg schedules`.

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <string>

#include "app/forms.hpp"
#include "app/runs.hpp"
#include "app/schedules.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/run_store.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

using app::json;
using http::Request;
using http::Response;

// The schedule named in the path as the API shows it, or a 404 sent.
void send_schedule(ServerState& state, const std::string& name, Response& res, int status = 200) {
  auto found = state.stores.with([&](RunStore& store) { return store.list_schedules(name); });
  if (!found) return http::send_error(res, found.error());
  if (found->empty()) return http::problem(res, 404, fmt::format("no schedule named '{}'", name));
  http::send_json(res, app::schedule_json(found->front(), std::chrono::system_clock::now()),
                  status);
}

void post_schedule(ServerState& state, const Request& req, Response& res) {
  const std::string type = req.get_header_value("Content-Type");
  if (!type.empty() && !type.starts_with("application/json"))
    return http::problem(
        res, 415,
        fmt::format("a schedule must be application/json, not '{}'", app::valid_text(type)));
  // JSON syntax, nesting and U+0000 checked as a run's input is.
  auto body = app::check_input(req.body, FlowDef{}, "the schedule", nullptr);
  if (!body) return http::problem(res, 400, body.error().message, body.error().details);
  auto def = app::schedule_from_json(*body);
  if (!def) return http::problem(res, 422, def.error().message, def.error().details);
  auto saved = state.stores.with([&](RunStore& store) { return app::save_schedule(store, *def); });
  if (!saved) return http::send_error(res, saved.error());
  send_schedule(state, def->name, res, *saved ? 201 : 200);
}

}  // namespace

void register_schedule_routes(http::Router& h, ServerState& state) {
  // ?limit=N (1..1000, default 1000) and ?after=NAME: a page of the schedules by name.
  h.Get("/api/v1/schedules", [&state](const Request& req, Response& res) {
    int limit = app::kMaxSchedulesListed;
    if (req.has_param("limit")) {
      const std::string v = req.get_param_value("limit");
      const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), limit);
      if (ec != std::errc() || end != v.data() + v.size() || limit < 1 ||
          limit > app::kMaxSchedulesListed)
        return http::problem(
            res, 400,
            fmt::format("limit '{}' is not a number from 1 to {}",
                        app::valid_text(detail::utf8_prefix(v, 40)), app::kMaxSchedulesListed));
    }
    const std::string after = app::valid_text(req.get_param_value("after"));
    auto listed = state.stores.with(
        [&](RunStore& store) { return store.list_schedules_page("", limit, after); });
    if (!listed) return http::send_error(res, listed.error());
    const auto now = std::chrono::system_clock::now();
    json out = json::array();
    for (const auto& s : *listed) out.push_back(app::schedule_json(s, now));
    http::send_json(res, out);
  });
  h.Post("/api/v1/schedules",
         [&state](const Request& req, Response& res) { post_schedule(state, req, res); });
  h.Get(R"(/api/v1/schedules/([^/]+))", [&state](const Request& req, Response& res) {
    send_schedule(state, app::valid_text(req.matches[1].str()), res);
  });
  h.Post(R"(/api/v1/schedules/([^/]+)/(pause|resume))", [&state](const Request& req,
                                                                 Response& res) {
    const std::string name = app::valid_text(req.matches[1].str());
    const bool pause = req.matches[2] == "pause";
    auto done =
        state.stores.with([&](RunStore& store) { return app::pause_schedule(store, name, pause); });
    if (!done) return http::send_error(res, done.error());
    send_schedule(state, name, res);
  });
  h.Post(R"(/api/v1/schedules/([^/]+)/trigger)", [&state](const Request& req, Response& res) {
    const std::string name = app::valid_text(req.matches[1].str());
    auto run = state.stores.with([&](RunStore& store) {
      return app::trigger_schedule(store, *state.options.registry, name);
    });
    if (!run) return http::send_error(res, run.error());
    http::send_json(res, app::run_json(*run), 201);
  });
  h.Post(R"(/api/v1/schedules/([^/]+)/delete)", [&state](const Request& req, Response& res) {
    const std::string name = app::valid_text(req.matches[1].str());
    auto deleted = state.stores.with([&](RunStore& store) { return store.delete_schedule(name); });
    if (!deleted) return http::send_error(res, deleted.error());
    if (!*deleted) return http::problem(res, 404, fmt::format("no schedule named '{}'", name));
    http::send_json(res, {{"name", name}, {"deleted", true}});
  });
}

}  // namespace flowreg::detail
