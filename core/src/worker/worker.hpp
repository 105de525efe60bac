#pragma once
// A flow worker: an Engine (engine.hpp) and one FlowService (flow_service.hpp) per flow version it
// serves, kept in step with the flow registry. The flow services have no threads of their own:
// the engine's lanes (lanes.hpp) make the round trips of all of them, in turn, so a worker's
// threads and connections do not grow with the flows it serves.
//
// The supervisors' names below, seen in events and logs, say "loop" for a flow service (its former
// name): they are behaviour, and stay.
//
// clang-format off
//   NAME                 supervisor, limit tree_restarts: restarts NAME.loops when it gives up
//   └─ NAME.loops        the set of flow services, reconciled on every registry event;
//      │                 a one_for_one supervisor, limit flow_restarts
//      └─ NAME.loop:SLUG@VERSION   a FlowService
// clang-format on
//
// A flow service failing restarts alone; more than flow_restarts restarts within their period make
// NAME.loops give up and start again with fresh ones; more than tree_restarts of those fail the
// worker (wait_failure()). The flow source is built once, when the worker starts.
//
// The flow services follow the flow registry: a new flow version gets one; a plugin replaced (new
// code) restarts the services of its flows on the new code, while handlers already running finish
// on the old one; a flow removed stops its service. Runs pinned to a version no service serves any
// more wait for a worker that still serves it.
//
// Thread-safety: every member function may be called concurrently.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"
#include "worker/engine.hpp"
#include "worker/worker_options.hpp"

namespace flowreg::detail {

// Where a worker's flows come from; built once when the worker starts.
// Shared: `flowreg serve --worker` serves its API from the same registry and loader.
struct FlowSource {
  std::shared_ptr<FlowRegistry> registry;
  // Resolves the handlers of the flows; stopped (watching ends) with the worker.
  std::shared_ptr<PluginLoader> loader;
};
using FlowSourceFactory = std::function<Result<FlowSource>()>;

class Worker {
 public:
  // Fills in options.worker_id when empty, builds the flow source, starts the engine on
  // PostgreSQL (options.conninfo), then the flow services. The error of the first part that cannot
  // start.
  static Result<std::unique_ptr<Worker>> start(WorkerOptions options, FlowSourceFactory source);
  ~Worker();  // stop()
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  const std::string& id() const noexcept;
  // Flow versions with a running flow service, sorted by slug.
  std::vector<FlowKey> serving() const;
  // The flow service of a registered, served flow: started unless running (one start however many
  // callers). Errc::not_found when the flow is not registered or not served here (--flows, a
  // handler no plugin exports); Errc::not_started when the flow services are down.
  Result<void> serve(std::string_view slug);

  // Waits up to `timeout` until the worker's heartbeat row names the flows serving() returns (see
  // Engine::await_heartbeat): announced after it, the worker is in `flowreg workers` already.
  bool await_heartbeat(Millis timeout);

  // The worker's failure once it gave up, waiting up to `timeout`; nullopt while it runs.
  std::optional<Error> wait_failure(Millis timeout);

  // Why the worker should be replaced by a new process (see Engine::replacement_due: handlers
  // that timed out hold too many of its threads), or nullopt. `flowreg worker` then calls
  // begin_replacing() (state "replacing"; a drain follows) and exits or re-executes itself.
  std::optional<std::string> replacement_due() const;
  void begin_replacing();

  // Graceful shutdown (see Engine): begin_drain(), wait while held() > 0 up to a deadline, then
  // stop().
  void begin_drain();
  int held() const;
  // Stops the flow services and finishes the engine (waiting for running handlers until
  // pool_deadline).
  DrainReport stop(SteadyTime pool_deadline = SteadyTime::max());

 private:
  struct Impl;
  explicit Worker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flowreg::detail
