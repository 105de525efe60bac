// The flows of the JSON API: the list, one flow, and its DAG drawn as SVG.

#include <fmt/format.h>

#include "app/forms.hpp"
#include "app/graph_svg.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"

namespace flowreg::detail {

std::string SvgCache::find(const std::string& key) const {
  MutexLock lock(mu_);
  if (auto it = svgs_.find(key); it != svgs_.end()) return it->second;
  return {};
}

void SvgCache::put(const std::string& key, std::string svg) {
  MutexLock lock(mu_);
  if (svgs_.size() > 1000) svgs_.clear();
  svgs_[key] = std::move(svg);
}

app::json ServerState::flows_json() const {
  app::json out = app::json::array();
  for (const auto& f : options.registry->list()) out.push_back(app::flow_json(*f));
  return out;
}

void register_flow_routes(http::Router& h, ServerState& state) {
  using http::problem;
  using http::Request;
  using http::Response;
  h.Get(
      "/api/v1/flows",
      [&state](const Request&, Response& res) { http::send_json(res, state.flows_json()); },
      http::Work::quick);
  h.Get(R"(/api/v1/flows/([^/]+))",
        [&state](const Request& req, Response& res) {
          const FlowRef flow = state.options.registry->get(req.matches[1].str());
          if (!flow)
            return problem(
                res, 404,
                fmt::format("no flow with slug '{}'", app::valid_text(req.matches[1].str())));
          http::send_json(res, app::flow_json(*flow));
        },
        http::Work::quick);
  h.Get(R"(/api/v1/flows/([^/]+)/graph\.svg)", [&state](const Request& req, Response& res) {
    const FlowRef flow = state.options.registry->get(req.matches[1].str());
    if (!flow)
      return problem(res, 404,
                     fmt::format("no flow with slug '{}'", app::valid_text(req.matches[1].str())));
    const std::string key = flow->def.slug + "@" + flow->version;
    std::string svg = state.svgs.find(key);
    if (svg.empty()) {
      auto drawn = flow_svg(flow->def);
      if (!drawn)  // too large to draw (invalid_argument), or a Graphviz failure
        return problem(res, drawn.error().code == Errc::invalid_argument ? 422 : 500,
                       drawn.error().message);
      svg = std::move(*drawn);
      state.svgs.put(key, svg);
    }
    res.set_content(svg, "image/svg+xml");
  });
}

}  // namespace flowreg::detail
