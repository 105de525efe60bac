#include "worker/flow_loop.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "logging/json_log.hpp"
#include "metrics/metrics.hpp"

namespace flowreg::detail {

namespace {
using Clock = std::chrono::steady_clock;
// How long a result may wait for others to share its round trip.
constexpr Millis kFlushDelay{2};
}  // namespace

FlowLoop::FlowLoop(Engine& engine, FlowDef flow, std::shared_ptr<LoopState> state, ExitSignal exit)
    : engine_(engine), flow_(std::move(flow)), state_(std::move(state)), exit_(std::move(exit)) {}

Result<std::shared_ptr<FlowLoop>> FlowLoop::start(Engine& engine, FlowDef flow,
                                                  std::shared_ptr<LoopState> state,
                                                  ExitSignal exit) {
  std::shared_ptr<FlowLoop> loop(
      new FlowLoop(engine, std::move(flow), std::move(state), std::move(exit)));
  engine.attach(loop->state_);
  const int lanes = std::max(1, engine.options().loop_lanes);
  for (int lane = 0; lane < lanes; ++lane)
    loop->threads_.emplace_back([raw = loop.get(), lane] { raw->run(lane); });
  return loop;
}

FlowLoop::~FlowLoop() { stop(); }

void FlowLoop::stop() noexcept {
  state_->stop();
  for (auto& t : threads_)
    if (t.joinable() && t.get_id() != std::this_thread::get_id()) t.join();
  engine_.retire(state_);
}

bool FlowLoop::await_definition(int lane) {
  if (lane != 0) return state_->wait_defined();
  const WorkerOptions& o = engine_.options();
  Millis backoff = o.reconnect_min;
  for (;;) {
    auto stored = engine_.store().upsert_flow(flow_, state_->key().version);
    if (stored) break;
    if (stored.error().code != Errc::unavailable) {
      exit_(stored.error());
      return false;
    }
    spdlog::debug("worker {}: {}: {}", engine_.worker_id(), state_->label(),
                  stored.error().format());
    if (!state_->pause(backoff)) return false;
    backoff = std::min(backoff * 2, o.reconnect_max);
  }
  state_->mark_defined();
  return true;
}

Result<WorkResult> FlowLoop::round_trip(LoopState::Round& round, int limit) {
  const WorkerOptions& o = engine_.options();
  const FlowKey keys[] = {state_->key()};
  Result<WorkResult> result = [&]() -> Result<WorkResult> {
    if (o.loop_probe)
      if (auto probe = o.loop_probe(state_->key()); !probe)
        return tl::unexpected(std::move(probe.error()));
    const auto sent = std::chrono::steady_clock::now();
    auto r = engine_.store().work(engine_.worker_id(), round.completions, round.failures, keys,
                                  limit, o.lease);
    metrics::record_round_trip(std::chrono::steady_clock::now() - sent, limit > 0,
                               !round.completions.empty() || !round.failures.empty());
    return r;
  }();
  if (!result) {
    engine_.release_slots(limit);
    state_->put_back(std::move(round.completions), std::move(round.failures));
    return result;
  }
  state_->forget(round.completions, round.failures);
  for (TaskId id : result->rejected)
    spdlog::info(
        "worker {}: {}: the result of task {} was not recorded (its attempt is no longer "
        "current)",
        engine_.worker_id(), state_->label(), id);
  for (TaskId id : result->refused)
    spdlog::warn(
        "worker {}: {}: the database cannot store the output of task {}: the task failed "
        "permanently (see its error)",
        engine_.worker_id(), state_->label(), id);
  engine_.release_slots(limit - static_cast<int>(result->claimed.size()));
  for (auto& task : result->claimed) engine_.dispatch(state_, std::move(task));
  return result;
}

void FlowLoop::run(int lane) {
  const logging::LogScope log_scope({engine_.worker_id(), state_->key().slug, {}, {}});
  if (!await_definition(lane)) return;
  const WorkerOptions& o = engine_.options();
  const std::size_t flush_at = static_cast<std::size_t>(std::max(1, o.batch_size / 2));
  const auto draining = [this] { return engine_.draining(); };
  auto next_poll = Clock::now();  // claim at once
  Millis backoff = o.reconnect_min;
  bool outage = false;
  for (;;) {
    auto round = state_->next_round(next_poll, flush_at, kFlushDelay, draining);
    if (round.stop) return;  // the engine records what is left (retired outbox)
    // A round trip that records results claims too, whatever is free: it costs nothing more.
    const bool flushing = !round.completions.empty() || !round.failures.empty();
    const int limit = round.want_claim || (flushing && !engine_.draining())
                          ? engine_.acquire_slots(o.batch_size, state_)
                          : 0;
    if (!flushing && limit == 0) {
      if (round.want_claim || engine_.draining()) next_poll = Clock::now() + o.poll_interval;
      continue;
    }
    auto result = round_trip(round, limit);
    if (!result) {
      if (result.error().code != Errc::unavailable) {
        exit_(result.error());
        return;
      }
      if (!outage)
        spdlog::warn("worker {}: {}: database unreachable, retrying: {}", engine_.worker_id(),
                     state_->label(), result.error().format());
      outage = true;
      if (!state_->pause(backoff)) return;
      backoff = std::min(backoff * 2, o.reconnect_max);
      continue;
    }
    if (outage)
      spdlog::info("worker {}: {}: database reachable again", engine_.worker_id(), state_->label());
    outage = false;
    backoff = o.reconnect_min;
    if (limit > 0 && static_cast<int>(result->claimed.size()) == limit) {
      state_->want_claim();  // there may be more
    } else if (round.want_claim) {
      next_poll = Clock::now() + o.poll_interval;
      if (result->next_due_in)
        next_poll = std::min(next_poll, Clock::now() + *result->next_due_in + Millis(1));
    }
  }
}

}  // namespace flowreg::detail
