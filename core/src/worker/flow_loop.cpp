#include "worker/flow_loop.hpp"

#include <utility>

namespace flowreg::detail {

FlowLoop::FlowLoop(Engine& engine, std::shared_ptr<LoopState> state)
    : engine_(engine), state_(std::move(state)) {}

Result<std::shared_ptr<FlowLoop>> FlowLoop::start(Engine& engine, FlowDef flow,
                                                  std::shared_ptr<LoopState> state,
                                                  ExitSignal exit) {
  std::shared_ptr<FlowLoop> loop(new FlowLoop(engine, state));
  engine.attach(state);
  loop->lane_entry_ = engine.lanes().add(std::move(flow), std::move(state), std::move(exit));
  return loop;
}

FlowLoop::~FlowLoop() { stop(); }

void FlowLoop::stop() noexcept {
  if (!lane_entry_) return;
  state_->stop();
  engine_.lanes().remove(lane_entry_);
  lane_entry_.reset();
  engine_.retire(state_);
}

}  // namespace flowreg::detail
