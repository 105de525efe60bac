// The routes that serve no resource of the registry: the probes for orchestrators (/healthz,
// /readyz), the Prometheus metrics, the dashboard's stylesheet and script, and the OpenAPI
// document.

#include <fmt/format.h>

#include <vector>

#include "app/health.hpp"
#include "metrics/metrics.hpp"
#include "server/assets.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/migrations.hpp"

namespace flowreg::detail {

void register_service_routes(http::Router& h, ServerState& state) {
  using http::Request;
  using http::Response;
  h.Get(
      "/healthz",
      [](const Request&, Response& res) {
        http::send_json(res, {{"status", "ok"}});
      },
      http::Work::quick);
  h.Get("/readyz", [&state](const Request&, Response& res) {
    const std::string& conninfo = state.options.conninfo;
    auto migrations = migration_status(conninfo);
    auto functions = migrations
                         ? function_status(conninfo)
                         : Result<std::vector<FunctionStatus>>(tl::unexpected(migrations.error()));
    if (!functions) return http::problem(res, 503, functions.error().message);
    std::vector<Diagnostic> behind;
    for (const auto& m : *migrations)
      if (m.state != MigrationState::applied)
        behind.push_back(
            {{}, fmt::format("migration {} {}: {}", m.version, m.name, to_string(m.state))});
    for (const auto& f : *functions)
      if (f.state != FunctionState::applied && f.state != FunctionState::unknown)
        behind.push_back({{}, fmt::format("function {}: {}", f.name, to_string(f.state))});
    if (!behind.empty())
      return http::problem(res, 503, "the database's schema is not current", behind);
    // What holds VACUUM back, as detail: a held snapshot slows the queue but is no reason to take
    // this server out of service.
    auto health = state.stores.with([](RunStore& store) { return app::db_health(store); });
    http::json vacuum = nullptr;
    if (health) {
      http::json warnings = http::json::array();
      for (const auto& w : health->warnings) warnings.push_back(w);
      vacuum = {{"ok", health->warnings.empty()}, {"warnings", std::move(warnings)}};
    }
    http::send_json(res, {{"status", "ready"},
                          {"database", "reachable"},
                          {"migrations", "current"},
                          {"health", std::move(vacuum)}});
  });
  // The database's health (app/health.hpp): what holds VACUUM back, flowreg's tables, retention.
  h.Get("/api/v1/health", [&state](const Request&, Response& res) {
    auto health = state.stores.with([](RunStore& store) { return app::db_health(store); });
    if (!health) return http::send_error(res, health.error());
    http::send_json(res, health->body);
  });
  h.Get("/metrics", [](const Request&, Response& res) {
    res.set_content(metrics::exposition(), metrics::kContentType);
  });
  h.Get(
      "/static/app.css",
      [](const Request&, Response& res) {
        res.set_header("Cache-Control", "max-age=300");
        res.set_content(assets::kCss, "text/css; charset=utf-8");
      },
      http::Work::quick);
  h.Get(
      "/static/app.js",
      [](const Request&, Response& res) {
        res.set_header("Cache-Control", "max-age=300");
        res.set_content(assets::kJs, "text/javascript; charset=utf-8");
      },
      http::Work::quick);
  h.Get(
      "/api/v1/openapi.json",
      [](const Request&, Response& res) { res.set_content(assets::kOpenApi, http::kJson); },
      http::Work::quick);
}

}  // namespace flowreg::detail
