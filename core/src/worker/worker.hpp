#pragma once
// A flow worker: the supervision tree of ExAtlas.Fly.Tokens.Supervisor (../shared/seeds), over an
// Engine (engine.hpp) that outlives it.
//
//   NAME                  rest_for_one, tree_restarts
//   ├─ NAME.registry      HandleRegistry of the flow loops, keyed "slug@version"
//   ├─ NAME.flows         owns the flow snapshot: the FlowRegistry and the PluginLoader (hot
//   drop-in) └─ NAME.loops         one_for_one, loop_restarts; a FlowLoop per served flow version,
//                         started through the registry's get_or_start (once, however many ask)
//
// The registry failing restarts everything (its entries would be stale); the flows' owner failing
// restarts the loops too (they hold its handlers); a loop failing restarts alone, until the loops'
// supervisor gives up and the tree restarts it; the tree giving up fails the worker (wait()).
// NAME.loops follows the flow registry: a new flow version gets a loop; a plugin replaced (new
// code) restarts the loops of its flows on the new code, while handlers already running finish on
// the old one; a flow removed stops its loop. Runs pinned to a version no loop serves any more wait
// for a worker that still serves it.
//
// Thread-safety: every member function may be called concurrently.

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

// Where a worker's flows come from; built by NAME.flows each time it starts.
struct FlowSource {
  std::unique_ptr<FlowRegistry> registry;
  // Resolves the handlers of the flows; stopped (watching ends) with the source.
  std::unique_ptr<PluginLoader> loader;
};
using FlowSourceFactory = std::function<Result<FlowSource>()>;

class Worker {
 public:
  // Fills in options.worker_id when empty, starts the engine, then the tree. The error of the
  // first child that cannot start.
  static Result<std::unique_ptr<Worker>> start(WorkerOptions options, FlowSourceFactory source);
  ~Worker();  // stop()
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  const std::string& id() const noexcept;
  // Flow versions with a running loop, sorted by slug.
  std::vector<FlowKey> serving() const;
  // The loop of a registered, served flow: started unless running (one start however many
  // callers). Errc::not_found when the flow is not registered or not served here (--flows, a
  // handler no plugin exports); Errc::not_started when the tree is down.
  Result<void> serve(std::string_view slug);

  // The tree's failure once it gave up, waiting up to `timeout`; nullopt while it runs.
  std::optional<Error> wait_failure(Millis timeout);

  // Graceful shutdown (see Engine): begin_drain(), wait while held() > 0 up to a deadline, then
  // stop().
  void begin_drain();
  int held() const;
  // Stops the tree and finishes the engine (waiting for running handlers until pool_deadline).
  DrainReport stop(SteadyTime pool_deadline = SteadyTime::max());

 private:
  struct Impl;
  explicit Worker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flowreg::detail
