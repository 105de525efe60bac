// The workers (from the run store) and the plugins (the plugins directory's files, now) of the
// JSON API.

#include "app/forms.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

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
  h.Get(
      "/api/v1/plugins",
      [&state](const Request&, Response& res) {
        json out = json::array();
        for (const auto& p : state.options.plugins()) out.push_back(app::plugin_json(p));
        http::send_json(res, out);
      },
      http::Work::quick);
}

}  // namespace flowreg::detail
