// The workers (from the run store) and the plugins (the plugins directory's files, now) of the
// JSON API.

#include <fmt/format.h>

#include <map>
#include <set>
#include <string>

#include "app/forms.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

app::json plugins_json(const ServerState& state) {
  using app::json;
  // handler -> the flows whose steps name it, from the registry (in memory: no database read).
  std::map<std::string, std::set<std::string>> uses;
  for (const auto& f : state.options.registry->list())
    for (const auto& step : f->def.steps)
      if (!step.handler.empty()) uses[step.handler].insert(f->def.slug);
  json out = json::array();
  for (const auto& p : state.options.plugins()) {
    json plugin = app::plugin_json(p);
    json handler_uses = json::array();
    for (const auto& h : p.handlers) {
      json flows = json::array();
      if (auto it = uses.find(h); it != uses.end())
        for (const auto& slug : it->second) flows.push_back(slug);
      handler_uses.push_back({{"handler", h}, {"flows", std::move(flows)}});
    }
    plugin["handler_uses"] = std::move(handler_uses);
    out.push_back(std::move(plugin));
  }
  return out;
}

void register_worker_plugin_routes(http::Router& h, ServerState& state) {
  using app::json;
  using http::Request;
  using http::Response;
  h.Get("/api/v1/workers", [&state](const Request&, Response& res) {
    auto workers = state.stores.with([](RunStore& store) { return store.list_workers(); });
    if (!workers) return http::send_error(res, workers.error());
    json out = json::array();
    for (const auto& w : *workers) out.push_back(app::worker_json(w));
    http::send_json(res, out);
  });
  // Forgets a stopped or stale worker (its row; nothing else): 409 for one that runs.
  h.Post(R"(/api/v1/workers/([^/]+)/forget)", [&state](const Request& req, Response& res) {
    const std::string id = app::valid_text(req.matches[1].str());
    auto done = state.stores.with([&](RunStore& store) { return store.forget_worker(id); });
    if (!done) return http::send_error(res, done.error());
    if (*done == ForgetOutcome::unknown)
      return http::problem(res, 404, fmt::format("no worker '{}'", id));
    if (*done == ForgetOutcome::running)
      return http::problem(
          res, 409,
          fmt::format("worker '{}' is running (only a stopped or stale worker can be forgotten)",
                      id));
    http::send_json(res, {{"worker", id}, {"forgotten", true}});
  });
  h.Get(
      "/api/v1/plugins",
      [&state](const Request&, Response& res) { http::send_json(res, plugins_json(state)); },
      http::Work::quick);
}

}  // namespace flowreg::detail
