#include "worker/flow_state.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <iterator>
#include <nlohmann/json.hpp>
#include <utility>

#include "worker/worker_store.hpp"

namespace flowreg::detail {

using Clock = std::chrono::steady_clock;

StepHandler step_handler(HandlerRef ref) {
  StepHandler h;
  h.name = ref.name();
  h.invoke = [ref = std::move(ref)](std::string_view input, std::string_view context) {
    return ref.invoke(input, context);
  };
  return h;
}

StepHandler sleep_handler() {
  StepHandler h;
  h.name = "sleep";
  h.invoke = [](std::string_view, std::string_view) {
    const auto now = std::chrono::system_clock::now();
    const std::time_t secs = std::chrono::system_clock::to_time_t(now);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
        1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return HandlerOutcome{
        HandlerOutcome::Status::ok,
        fmt::format(R"({{"woke_at":"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z"}})",
                    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                    ms)};
  };
  return h;
}

StepHandler wait_handler(const StepDef& step) {
  StepHandler h;
  h.name = "wait";
  const Wait w = step.wait.value_or(Wait{});
  if (w.default_output) {
    h.invoke = [out = w.default_output->dump()](std::string_view, std::string_view) {
      return HandlerOutcome{HandlerOutcome::Status::ok, out};
    };
    return h;
  }
  const std::string why = fmt::format(
      "timed out after {} waiting for {} '{}'", format_duration_days(w.timeout.value_or(Millis{0})),
      w.signal ? "signal" : "event", w.signal ? *w.signal : w.event.value_or(""));
  h.invoke = [why](std::string_view, std::string_view) {
    return HandlerOutcome{HandlerOutcome::Status::permanent, why};
  };
  return h;
}

StepHandler child_handler() {
  StepHandler h;
  h.name = "flow";
  h.invoke = [](std::string_view input, std::string_view) {
    // Written by _run_ended from the child's row; parsed defensively all the same.
    const auto end = nlohmann::json::parse(input, nullptr, /*allow_exceptions=*/false);
    if (!end.is_object() || !end.contains("status"))
      return HandlerOutcome{HandlerOutcome::Status::permanent,
                            "a child run's end handed back without its status"};
    const auto text = [&](const char* key) {
      return end.contains(key) && end[key].is_string() ? end[key].get<std::string>()
                                                       : std::string();
    };
    const std::string status = text("status"), run = text("run"), flow = text("flow");
    if (status == "completed")
      return HandlerOutcome{HandlerOutcome::Status::ok,
                            end.contains("output") ? end["output"].dump() : "null"};
    const std::string error = text("error");
    return HandlerOutcome{
        HandlerOutcome::Status::permanent,
        status == "cancelled"
            ? fmt::format("child run {} of flow '{}' was cancelled", run, flow)
            : fmt::format("child run {} of flow '{}' {}: {}", run, flow, status, error)};
  };
  return h;
}

Millis renew_period(Millis timeout, Millis lease) {
  const Millis granted = timeout.count() > 0 ? std::min(timeout, lease) : lease;
  return std::max(granted / 3, Millis(1));
}

FlowState::FlowState(FlowKey key, std::unordered_map<std::string, StepHandler> handlers)
    : key_(std::move(key)),
      label_(detail::label(key_)),
      handlers_(std::move(handlers)),
      in_processes_(std::any_of(handlers_.begin(), handlers_.end(),
                                [](const auto& h) { return h.second.process != nullptr; })) {}

const StepHandler* FlowState::handler(const std::string& step) const {
  auto it = handlers_.find(step);
  return it == handlers_.end() || !it->second.invoke ? nullptr : &it->second;
}

void FlowState::set_waker(std::function<void()> waker, std::size_t flush_at) {
  MutexLock lock(mu_);
  waker_ = std::move(waker);
  flush_at_ = std::max<std::size_t>(flush_at, 1);
}

void FlowState::want_claim() {
  std::function<void()> wake;
  {
    MutexLock lock(mu_);
    claim_wanted_ = true;
    wake = waker_;
  }
  cv_.notify_all();
  if (wake) wake();
}

void FlowState::stop() {
  std::function<void()> wake;
  {
    MutexLock lock(mu_);
    stopping_ = true;
    stop_requested_ = true;
    wake = waker_;
  }
  cv_.notify_all();
  if (wake) wake();
}

void FlowState::retire() {
  MutexLock lock(mu_);
  retired_ = true;
}

bool FlowState::flush_due(std::size_t flush_at, Millis flush_delay) const {
  const std::size_t n = completions_.size() + failures_.size();
  if (n == 0) return false;
  // Held tasks whose results wait here do not count: nothing else runs when only they do.
  const bool running = std::any_of(held_.begin(), held_.end(),
                                   [](const auto& h) { return !h.second.result_pending; });
  return !running || n >= flush_at || Clock::now() >= first_result_at_ + flush_delay;
}

FlowState::Round FlowState::next_round(SteadyTime next_poll, std::size_t flush_at,
                                       Millis flush_delay, const std::function<bool()>& draining) {
  Round round;
  MutexLock lock(mu_);
  while (!stopping_ && !flush_due(flush_at, flush_delay) && !(claim_wanted_ && !draining())) {
    auto until = next_poll;
    if (!completions_.empty() || !failures_.empty())
      until = std::min(until, first_result_at_ + flush_delay);
    if (cv_.wait_until(lock, until) == std::cv_status::timeout && Clock::now() >= next_poll) break;
  }
  if (stopping_) {
    round.stop = true;  // the keeper records what is left (retired outbox)
    return round;
  }
  take_results(round.completions, round.failures);
  round.want_claim = !draining() && (claim_wanted_ || Clock::now() >= next_poll);
  claim_wanted_ = false;
  return round;
}

std::optional<FlowState::Round> FlowState::take_round(bool poll_due, std::size_t flush_at,
                                                      Millis flush_delay, bool draining,
                                                      SteadyTime& wake) {
  wake = SteadyTime::max();
  MutexLock lock(mu_);
  Round round;
  if (stopping_) {
    round.stop = true;
    return round;
  }
  const bool claim = !draining && (claim_wanted_ || poll_due);
  if (!claim && !flush_due(flush_at, flush_delay)) {
    if (!completions_.empty() || !failures_.empty()) wake = first_result_at_ + flush_delay;
    return std::nullopt;
  }
  take_results(round.completions, round.failures);
  round.want_claim = claim;
  claim_wanted_ = false;
  return round;
}

void FlowState::take_results(std::vector<Completion>& completions, std::vector<Failure>& failures) {
  failures.swap(failures_);  // error texts are short (cut by the engine)
  std::size_t bytes = 0, n = 0;
  while (n < completions_.size() && (n == 0 || bytes + completions_[n].bytes <= kMaxRecordBytes))
    bytes += completions_[n++].bytes;
  if (n == completions_.size()) {
    completions.swap(completions_);
    return;
  }
  const auto cut = completions_.begin() + static_cast<long>(n);
  completions.assign(std::make_move_iterator(completions_.begin()), std::make_move_iterator(cut));
  completions_.erase(completions_.begin(), cut);
  first_result_at_ = Clock::now();
}

void FlowState::put_back(std::vector<Completion> completions, std::vector<Failure> failures) {
  std::function<void()> wake;
  {
    MutexLock lock(mu_);
    wake = waker_;
    if (completions_.empty() && failures_.empty()) first_result_at_ = Clock::now();
    completions_.insert(completions_.begin(), std::make_move_iterator(completions.begin()),
                        std::make_move_iterator(completions.end()));
    failures_.insert(failures_.begin(), std::make_move_iterator(failures.begin()),
                     std::make_move_iterator(failures.end()));
    claim_wanted_ = true;
  }
  cv_.notify_all();
  if (wake) wake();
}

void FlowState::forget(const std::vector<Completion>& completions,
                       const std::vector<Failure>& failures) {
  if (completions.empty() && failures.empty()) return;
  MutexLock lock(mu_);
  const auto forget_one = [&](TaskId id) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_)) {
    auto it = held_.find(id);
    if (it != held_.end() && it->second.result_pending) {
      held_.erase(it);
      --pending_;
    }
  };
  for (const auto& c : completions) forget_one(c.id);
  for (const auto& f : failures) forget_one(f.id);
}

bool FlowState::take_retired(std::vector<Completion>& completions, std::vector<Failure>& failures) {
  MutexLock lock(mu_);
  if (!retired_) return false;
  take_results(completions, failures);
  return true;
}

void FlowState::hold(const ClaimedTask& task, SteadyTime next_renew) {
  MutexLock lock(mu_);
  HeldTask& held = held_[task.id];
  if (held.result_pending) --pending_;
  // Claimed again while the handler of its attempt that timed out still runs: that handler is
  // tracked apart (it still holds a thread), so that its return is told from the new attempt's.
  if (held.stuck) stuck_orphans_.push_back(TaskAttempt{task.id, held.attempt});
  held = HeldTask{};
  held.attempt = task.attempt;
  held.timeout = task.timeout;
  if (auto it = handlers_.find(task.step_slug); it != handlers_.end() && it->second.process)
    held.grace = kProcessGrace;
  held.next_renew = next_renew;
}

void FlowState::started(TaskId id, SteadyTime now) {
  MutexLock lock(mu_);
  if (auto it = held_.find(id); it != held_.end()) it->second.running_since = now;
}

bool FlowState::give_back(TaskId id) {
  MutexLock lock(mu_);
  auto it = held_.find(id);
  if (it == held_.end()) return false;
  if (it->second.result_pending) --pending_;
  if (it->second.stuck) --stuck_count_;
  held_.erase(it);
  return true;
}

FlowState::Put FlowState::put_result(TaskId id, std::optional<Completion> completion,
                                     std::optional<Failure> failure) {
  Put put = Put::unknown;
  std::function<void()> wake;
  {
    MutexLock lock(mu_);
    const int attempt = completion ? completion->attempt : failure ? failure->attempt : 0;
    auto orphan =
        std::find_if(stuck_orphans_.begin(), stuck_orphans_.end(),
                     [&](const TaskAttempt& t) { return t.id == id && t.attempt == attempt; });
    if (orphan != stuck_orphans_.end()) {
      stuck_orphans_.erase(orphan);
      --stuck_count_;
      return Put::dropped_stuck;
    }
    auto it = held_.find(id);
    if (it == held_.end()) return Put::unknown;
    if (it->second.abandoned) {
      put = it->second.stuck ? Put::dropped_stuck : Put::dropped;
      if (it->second.stuck) --stuck_count_;
      held_.erase(it);
    } else {
      const bool first = completions_.empty() && failures_.empty();
      if (first) first_result_at_ = Clock::now();
      if (completion) completions_.push_back(std::move(*completion));
      if (failure) failures_.push_back(std::move(*failure));
      if (!it->second.result_pending) ++pending_;
      it->second.result_pending = true;  // held (and its lease renewed) until recorded
      put = Put::queued;
      // The lanes are woken when this result may make a round due (see set_waker); a result in
      // between waits for the flush timer the first one set, or for a later wake-up.
      if (first || completions_.size() + failures_.size() >= flush_at_ || pending_ >= held_.size())
        wake = waker_;
    }
  }
  cv_.notify_all();
  if (wake) wake();
  return put;
}

bool FlowState::result_queued(TaskId id) const {
  MutexLock lock(mu_);
  auto it = held_.find(id);
  return it != held_.end() && it->second.result_pending;
}

bool FlowState::has_results() const {
  MutexLock lock(mu_);
  return !completions_.empty() || !failures_.empty();
}

int FlowState::held() const {
  MutexLock lock(mu_);
  const auto running = [&](TaskId id) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_)) {
    auto it = held_.find(id);
    return it != held_.end() && !it->second.stuck;
  };
  int n = static_cast<int>(held_.size()) - (stuck_count_ - static_cast<int>(stuck_orphans_.size()));
  for (const auto& c : completions_) n += running(c.id) ? 0 : 1;
  for (const auto& f : failures_) n += running(f.id) ? 0 : 1;
  return n;
}

bool FlowState::idle() const {
  MutexLock lock(mu_);
  return held_.empty() && completions_.empty() && failures_.empty();
}

// Every held task is renewed on the keeper's cadence (renew_all), in one statement; a task whose
// step timeout is shorter than the lease gets a shorter lease, so it is renewed on its own cadence
// too (else its lease would lapse before its timeout fails it).
FlowState::Sweep FlowState::sweep(SteadyTime now, bool renew_all, Millis lease) {
  Sweep out;
  std::function<void()> wake;
  {
    MutexLock lock(mu_);
    wake = waker_;
    for (auto& [id, task] : held_) {
      if (task.abandoned) continue;
      if (task.running_since && !task.result_pending &&
          now - *task.running_since >= task.timeout + task.grace) {
        task.abandoned = true;
        task.stuck = true;
        ++stuck_count_;
        if (completions_.empty() && failures_.empty()) first_result_at_ = Clock::now();
        failures_.push_back(Failure{id, task.attempt,
                                    "timed out: no result within the step timeout of " +
                                        std::to_string(task.timeout.count()) + " ms",
                                    false});
        out.timed_out.push_back({id, task.timeout});
        continue;
      }
      if (renew_all || now >= task.next_renew) {
        task.next_renew = now + renew_period(task.timeout, lease);
        out.renew.push_back(TaskAttempt{id, task.attempt});
      }
    }
  }
  if (!out.timed_out.empty()) {
    cv_.notify_all();
    if (wake) wake();
  }
  return out;
}

bool FlowState::lose_lease(TaskId id) {
  MutexLock lock(mu_);
  auto it = held_.find(id);
  if (it == held_.end() || it->second.result_pending) return false;
  it->second.abandoned = true;
  return true;
}

std::vector<Release> FlowState::give_up_running() {
  std::vector<Release> out;
  MutexLock lock(mu_);
  retired_ = true;
  for (auto& [id, task] : held_) {
    if (task.abandoned) continue;       // timed out (its failure is in the outbox) or lease lost
    if (task.result_pending) continue;  // its result is recorded by the keeper
    task.abandoned = true;              // a result arriving later is dropped
    out.push_back(Release{id, task.attempt, task.running_since.has_value()});
  }
  return out;
}

}  // namespace flowreg::detail
