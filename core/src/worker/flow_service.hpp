#pragma once
// A flow service: one flow version served by a worker, as a supervised Service (the child
// NAME.loop:SLUG@VERSION of worker.hpp; that name, seen in events and logs, is kept). It has no
// thread and no loop of its own: starting it registers its FlowState with the engine and puts the
// flow version into the worker's lanes (lanes.hpp), which store its definition, then, until it
// stops, record its finished tasks and claim more in one round trip (WorkerStore::work) whenever
// there are results to record, a notification says tasks are ready, capacity frees up after a full
// claim, or a delayed retry falls due (idle flows are polled together, once per poll interval).
// Claimed tasks go to the engine, which runs them and puts their results in the flow's FlowState.
//
// The lanes, a few threads per worker, serve every flow in turn, so a worker serving hundreds of
// flow versions runs as many threads as one serving a single flow.
//
// It reports through its ExitSignal when it cannot go on (an error other than the database being
// unreachable, which the lanes ride out with backoff). Stopping it leaves its handlers running:
// the engine records their results (see engine.hpp).
//
// Thread-safety: start() and stop() from the supervisor.

#include <memory>

#include "flowreg/flow.hpp"
#include "flowreg/tools/supervisor.hpp"
#include "worker/engine.hpp"
#include "worker/lanes.hpp"

namespace flowreg::detail {

class FlowService final : public Service {
 public:
  // `flow` is the definition stored for `state->key()`.
  static Result<std::shared_ptr<FlowService>> start(Engine& engine, FlowDef flow,
                                                    std::shared_ptr<FlowState> state,
                                                    ExitSignal exit);
  ~FlowService() override;
  FlowService(const FlowService&) = delete;
  FlowService& operator=(const FlowService&) = delete;

  // Takes the flow version out of the lanes (waiting for its round trip in flight) and retires its
  // state. Idempotent.
  void stop() noexcept override;

 private:
  FlowService(Engine& engine, std::shared_ptr<FlowState> state);

  Engine& engine_;
  const std::shared_ptr<FlowState> state_;
  std::shared_ptr<const Lanes::Flow> lane_entry_;  // set by start(); null once stopped
};

}  // namespace flowreg::detail
