#pragma once
// The route groups of `flowreg serve`, one per resource, and the state they share. server.cpp
// registers each group in turn (its table of contents); the token, the Host and Origin checks,
// the limits and the error replies stay there, around every route.
//
// Every group captures a reference to the ServerState: HttpServer::Impl owns it and stops the
// server (joining every request thread) before destroying it.

#include <atomic>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "app/forms.hpp"
#include "flowreg/error.hpp"
#include "flowreg/thread_annotations.hpp"
#include "server/event_hub.hpp"
#include "server/http_message.hpp"
#include "server/server.hpp"
#include "server/stores.hpp"

namespace flowreg::detail {

// The flows' DAG drawings, "slug@version" -> SVG. Thread-safety: safe for concurrent use.
class SvgCache {
 public:
  SvgCache() = default;
  SvgCache(const SvgCache&) = delete;
  SvgCache& operator=(const SvgCache&) = delete;

  std::string find(const std::string& key) const;     // "" when not drawn yet
  void put(const std::string& key, std::string svg);  // past 1000 drawings, starts again empty

 private:
  mutable AnnotatedMutex mu_;
  std::map<std::string, std::string> svgs_ FLOWREG_GUARDED_BY(mu_);
};

// What the routes share, for the server's lifetime. Thread-safety: every member is safe for
// concurrent use by the request threads (the registry and the plugins callback by ServerOptions'
// contract).
struct ServerState {
  explicit ServerState(ServerOptions o)
      : options(std::move(o)), stores(options.conninfo), hub(options.conninfo) {}
  ServerState(const ServerState&) = delete;
  ServerState& operator=(const ServerState&) = delete;

  const ServerOptions options;
  Stores stores;
  EventHub hub;
  std::atomic<int> streams{0};  // event streams open now (at most settings.max_event_streams)
  SvgCache svgs;

  // The registry's flows as the API shows them.
  app::json flows_json() const;  // api_flows.cpp
  // A run with its "steps", or Errc::not_found.
  Result<app::json> run_with_steps(const std::string& id);  // api_runs.cpp
  // A page of a run's attempts: {run, step, total, offset, limit, next_offset, attempts}
  // (step "": every step's), or Errc::not_found when there is no such run.
  Result<app::json> run_attempts(const std::string& id, const std::string& step, int limit,
                                 int offset);  // api_runs.cpp
};

// GET /healthz, /readyz, /metrics, /static/app.css, /static/app.js, /api/v1/openapi.json
void register_service_routes(http::Router& http, ServerState& state);  // service_routes.cpp
// GET /api/v1/flows, /api/v1/flows/{slug}, /api/v1/flows/{slug}/graph.svg
void register_flow_routes(http::Router& http, ServerState& state);  // api_flows.cpp
// POST /api/v1/flows/{slug}/runs; GET /api/v1/runs, /api/v1/runs/{id};
// POST /api/v1/runs/{id}/cancel, /api/v1/runs/{id}/retry
void register_run_routes(http::Router& http, ServerState& state);  // api_runs.cpp
// GET /api/v1/runs/{id}/graph.svg, /api/v1/runs/{id}/steps/{step}/tasks
void register_run_detail_routes(http::Router& http, ServerState& state);  // api_run_detail.cpp
// A page of a step's tasks (what the queue holds of them), as GET .../steps/{step}/tasks answers
// it: tasks with an index of `offset` or more, at most `limit`. Errc::not_found for no such run
// or step.
Result<app::json> step_tasks_page(ServerState& state, const std::string& id,
                                  const std::string& step, int offset, int limit);
// Its offset= and limit= parameters (limit: `default_limit` when absent); nullopt when invalid.
inline constexpr int kDefaultTasksLimit = 50;
inline constexpr int kMaxTasksLimit = 500;
inline constexpr int kMaxTaskIndex = 1'000'000'000;
std::optional<std::pair<int, int>> task_page_params(const http::Request& req, int default_limit);
// The plugins as GET /api/v1/plugins lists them: each with its handlers' uses, the registry's flows
// whose steps name each handler ("handler_uses": [{"handler", "flows": [slug, ...]}]).
app::json plugins_json(const ServerState& state);  // api_workers_plugins.cpp
// GET /api/v1/workers, /api/v1/plugins; POST /api/v1/workers/{id}/forget
// GET /api/v1/schedules, /api/v1/schedules/{name}; POST /api/v1/schedules,
// /api/v1/schedules/{name}/pause, /resume, /trigger, /delete
void register_schedule_routes(http::Router& http, ServerState& state);  // api_schedules.cpp
void register_worker_plugin_routes(http::Router& http,
                                   ServerState& state);  // api_workers_plugins.cpp
// GET /api/v1/events (Server-Sent Events)
void register_event_routes(http::Router& http, ServerState& state);  // api_events.cpp
// GET /, /flows/{slug}, /runs, /runs/{id}, /schedules, /schedules/{name}, /workers, /plugins;
// POST /schedules/{name}/pause, /resume, /trigger, /delete (the dashboard)
void register_page_routes(http::Router& http, ServerState& state);  // pages.cpp

// GET /api/v1/runs (JSON) and the dashboard's /runs (`html`): the same query parameters (flow,
// status, limit, before), read the same way.
void list_runs(ServerState& state, const http::Request& req, http::Response& res,
               bool html);  // api_runs.cpp

}  // namespace flowreg::detail
