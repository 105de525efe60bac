#pragma once
// The loop of one flow version in a worker: stores the flow's definition, then, until stopped,
// records its finished tasks and claims more in one round trip (WorkerStore::work) whenever there
// are results to record, a notification says tasks are ready, capacity frees up after a full
// claim, or the poll interval (or the next retry's due time) passes. Claimed tasks go to the
// engine, which runs them and puts their results in the loop's LoopState.
//
// It runs on `lanes` threads (WorkerOptions::loop_lanes) that share its outbox: while one lane
// waits for its round trip, another records the results that arrived meanwhile and claims more,
// so one worker keeps the database and its handlers busy at once.
//
// It is a supervised Service: it reports through its ExitSignal when it cannot go on (an error
// other than the database being unreachable, which it rides out with backoff). Stopping it leaves
// its handlers running: the engine records their results (see engine.hpp).
//
// Thread-safety: start() and stop() from the supervisor; the lanes run on their own threads.

#include <memory>
#include <thread>
#include <vector>

#include "flowreg/flow.hpp"
#include "flowreg/tools/supervisor.hpp"
#include "worker/engine.hpp"

namespace flowreg::detail {

class FlowLoop final : public Service {
 public:
  // `flow` is the definition stored for `state->key()`.
  static Result<std::shared_ptr<FlowLoop>> start(Engine& engine, FlowDef flow,
                                                 std::shared_ptr<LoopState> state, ExitSignal exit);
  ~FlowLoop() override;
  FlowLoop(const FlowLoop&) = delete;
  FlowLoop& operator=(const FlowLoop&) = delete;

  void stop() noexcept override;

 private:
  FlowLoop(Engine& engine, FlowDef flow, std::shared_ptr<LoopState> state, ExitSignal exit);
  void run(int lane);
  // Lane 0 stores the flow version (retrying while the database is unreachable); the others wait
  // for it. False when the lane must end.
  bool await_definition(int lane);
  // One round trip: records the round's results and claims up to `limit` tasks, which go to the
  // engine. The error of a failed trip (its results are put back for the next one).
  Result<WorkResult> round_trip(LoopState::Round& round, int limit);

  Engine& engine_;
  const FlowDef flow_;
  const std::shared_ptr<LoopState> state_;
  const ExitSignal exit_;
  std::vector<std::thread> threads_;
};

}  // namespace flowreg::detail
