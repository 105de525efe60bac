#include "worker/flow_service.hpp"

#include <utility>

namespace flowreg::detail {

FlowService::FlowService(Engine& engine, std::shared_ptr<FlowState> state)
    : engine_(engine), state_(std::move(state)) {}

Result<std::shared_ptr<FlowService>> FlowService::start(Engine& engine, FlowDef flow,
                                                        std::shared_ptr<FlowState> state,
                                                        ExitSignal exit) {
  std::shared_ptr<FlowService> service(new FlowService(engine, state));
  engine.attach(state);
  service->lane_entry_ = engine.lanes().add(std::move(flow), std::move(state), std::move(exit));
  return service;
}

FlowService::~FlowService() { stop(); }

void FlowService::stop() noexcept {
  if (!lane_entry_) return;
  state_->stop();
  engine_.lanes().remove(lane_entry_);
  lane_entry_.reset();
  engine_.retire(state_);
}

}  // namespace flowreg::detail
