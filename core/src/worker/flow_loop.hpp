#pragma once
// The loop of one flow version in a worker: a supervised Service that puts the flow version into
// the worker's lanes (loop_lanes.hpp), which store its definition, then, until it stops, record its
// finished tasks and claim more in one round trip (WorkerStore::work) whenever there are results
// to record, a notification says tasks are ready, capacity frees up after a full claim, or a
// delayed retry falls due (idle flows are polled together, once per poll interval). Claimed tasks
// go to the engine, which runs them and puts their results in the loop's LoopState.
//
// A loop has no thread of its own: the lanes, a few threads per worker, serve every loop in turn,
// so a worker serving hundreds of flow versions runs as many threads as one serving a single flow.
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
#include "worker/loop_lanes.hpp"

namespace flowreg::detail {

class FlowLoop final : public Service {
 public:
  // `flow` is the definition stored for `state->key()`.
  static Result<std::shared_ptr<FlowLoop>> start(Engine& engine, FlowDef flow,
                                                 std::shared_ptr<LoopState> state, ExitSignal exit);
  ~FlowLoop() override;
  FlowLoop(const FlowLoop&) = delete;
  FlowLoop& operator=(const FlowLoop&) = delete;

  // Takes the loop out of the lanes (waiting for its round trip in flight) and retires its state.
  // Idempotent.
  void stop() noexcept override;

 private:
  FlowLoop(Engine& engine, std::shared_ptr<LoopState> state);

  Engine& engine_;
  const std::shared_ptr<LoopState> state_;
  std::shared_ptr<const LoopLanes::Loop> lane_entry_;  // set by start(); null once stopped
};

}  // namespace flowreg::detail
