#include "worker/flow_loop.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

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
  {
    std::lock_guard lock(state_->mu);
    state_->stopping = true;
  }
  state_->cv.notify_all();
  for (auto& t : threads_)
    if (t.joinable() && t.get_id() != std::this_thread::get_id()) t.join();
  engine_.retire(state_);
}

bool FlowLoop::pause(Millis d) {
  std::unique_lock lock(state_->mu);
  return !state_->cv.wait_for(lock, d, [&] { return state_->stopping; });
}

Result<void> FlowLoop::store_definition() {
  const WorkerOptions& o = engine_.options();
  Millis backoff = o.reconnect_min;
  for (;;) {
    auto stored = engine_.stores().with(
        [&](RunStore& s) { return s.upsert_flow(flow_, state_->key.version); });
    if (stored) return {};
    if (stored.error().code != Errc::unavailable) return tl::unexpected(stored.error());
    spdlog::debug("worker {}: {}: {}", engine_.worker_id(), state_->label, stored.error().format());
    if (!pause(backoff)) return {};
    backoff = std::min(backoff * 2, o.reconnect_max);
  }
}

void FlowLoop::run(int lane) {
  const WorkerOptions& o = engine_.options();
  if (lane == 0) {
    if (auto stored = store_definition(); !stored) {
      exit_(stored.error());
      return;
    }
    {
      std::lock_guard lock(state_->mu);
      defined_ = true;
    }
    state_->cv.notify_all();
  } else {
    std::unique_lock lock(state_->mu);
    state_->cv.wait(lock, [&] { return defined_ || state_->stopping; });
    if (state_->stopping) return;
  }
  const std::vector<FlowKey> keys{state_->key};
  auto next_poll = Clock::now();  // claim at once
  Millis backoff = o.reconnect_min;
  bool outage = false;
  std::vector<Completion> done;
  std::vector<Failure> failed;
  for (;;) {
    bool want_claim = false;
    {
      std::unique_lock lock(state_->mu);
      // Results are recorded in batches: at once when nothing else runs, else when half a batch
      // is waiting or the first has waited kFlushDelay (results ride with the next claim).
      const auto results = [&] { return state_->completions.size() + state_->failures.size(); };
      const auto flush_due = [&] {
        const std::size_t n = results();
        // Held tasks whose results wait here do not count: nothing else runs when only they do.
        const auto running = [&] {
          return std::any_of(state_->held.begin(), state_->held.end(),
                             [](const auto& h) { return !h.second.result_pending; });
        };
        return n > 0 &&
               (!running() || n >= static_cast<std::size_t>(std::max(1, o.batch_size / 2)) ||
                Clock::now() >= state_->first_result_at + kFlushDelay);
      };
      const auto ready = [&] {
        return state_->stopping || flush_due() || (state_->claim_wanted && !engine_.draining());
      };
      while (!ready()) {
        auto until = next_poll;
        if (results() > 0) until = std::min(until, state_->first_result_at + kFlushDelay);
        if (state_->cv.wait_until(lock, until) == std::cv_status::timeout &&
            Clock::now() >= next_poll)
          break;
      }
      if (state_->stopping) return;  // the engine records what is left (retired outbox)
      Engine::take_results(*state_, done, failed);
      want_claim = !engine_.draining() && (state_->claim_wanted || Clock::now() >= next_poll);
      state_->claim_wanted = false;
    }
    // A round trip that records results claims too, whatever is free: it costs nothing more.
    const bool flushing = !done.empty() || !failed.empty();
    const int limit = want_claim || (flushing && !engine_.draining())
                          ? engine_.acquire_slots(o.batch_size, state_)
                          : 0;
    if (done.empty() && failed.empty() && limit == 0) {
      if (want_claim || engine_.draining()) next_poll = Clock::now() + o.poll_interval;
      continue;
    }

    Result<WorkResult> result = [&]() -> Result<WorkResult> {
      if (o.loop_probe)
        if (auto probe = o.loop_probe(state_->key); !probe)
          return tl::unexpected(std::move(probe.error()));
      return engine_.stores().with([&](RunStore& s) {
        return s.work(engine_.worker_id(), done, failed, keys, limit, o.lease);
      });
    }();
    if (!result) {
      engine_.release_slots(limit);
      {
        std::lock_guard lock(state_->mu);  // keep the results for the next round trip
        state_->completions.insert(state_->completions.begin(), done.begin(), done.end());
        state_->failures.insert(state_->failures.begin(), failed.begin(), failed.end());
        state_->claim_wanted = true;
      }
      done.clear();
      failed.clear();
      if (result.error().code != Errc::unavailable) {
        exit_(result.error());
        return;
      }
      if (!outage)
        spdlog::warn("worker {}: {}: database unreachable, retrying: {}", engine_.worker_id(),
                     state_->label, result.error().format());
      outage = true;
      if (!pause(backoff)) return;
      backoff = std::min(backoff * 2, o.reconnect_max);
      continue;
    }
    if (outage)
      spdlog::info("worker {}: {}: database reachable again", engine_.worker_id(), state_->label);
    outage = false;
    backoff = o.reconnect_min;
    Engine::forget_results(*state_, done, failed);
    done.clear();
    failed.clear();
    for (TaskId id : result->rejected)
      spdlog::info(
          "worker {}: {}: the result of task {} was not recorded (its attempt is no "
          "longer current)",
          engine_.worker_id(), state_->label, id);
    const int claimed = static_cast<int>(result->claimed.size());
    engine_.release_slots(limit - claimed);
    for (auto& task : result->claimed) engine_.dispatch(state_, std::move(task));
    if (limit > 0 && claimed == limit) {
      std::lock_guard lock(state_->mu);
      state_->claim_wanted = true;  // there may be more
    } else if (want_claim) {
      next_poll = Clock::now() + o.poll_interval;
      if (result->next_due_in)
        next_poll = std::min(next_poll, Clock::now() + *result->next_due_in + Millis(1));
    }
  }
}

}  // namespace flowreg::detail
