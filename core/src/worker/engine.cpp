#include "worker/engine.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <utility>

namespace flowreg::detail {

namespace {

using Clock = std::chrono::steady_clock;

std::string hostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace

Engine::Engine(WorkerOptions options)
    : options_(std::move(options)),
      stores_(options_.conninfo, options_.store_connections),
      pool_(options_.concurrency),
      free_slots_(options_.concurrency + std::max(1, options_.loop_lanes) * options_.batch_size) {
  notifier_ = std::thread([this] { notifier_main(); });
  keeper_ = std::thread([this] { keeper_main(); });
}

Engine::~Engine() { finish(SteadyTime::max()); }

void Engine::attach(const std::shared_ptr<LoopState>& state) {
  std::lock_guard lock(mu_);
  states_.push_back(state);
}

void Engine::retire(const std::shared_ptr<LoopState>& state) {
  {
    std::lock_guard lock(state->mu);
    state->retired = true;
  }
  std::lock_guard lock(mu_);
  stop_cv_.notify_all();  // the keeper records its outbox soon
}

std::vector<std::shared_ptr<LoopState>> Engine::states() const {
  std::lock_guard lock(mu_);
  return states_;
}

int Engine::acquire_slots(int wanted, const std::shared_ptr<LoopState>& state) {
  std::lock_guard lock(mu_);
  const int got = std::min(wanted, free_slots_);
  free_slots_ -= got;
  if (got == 0) starving_.push_back(state);
  return got;
}

int Engine::claim_threshold() const noexcept { return std::max(1, options_.batch_size / 2); }

void Engine::release_slots(int n) {
  if (n <= 0) return;
  std::vector<std::weak_ptr<LoopState>> wake;
  {
    std::lock_guard lock(mu_);
    free_slots_ += n;
    // Starved loops are woken once half a batch is free, not for every finished handler (a claim
    // per handler would cost a round trip each). All slots free is more than that, so a starved
    // loop is always woken in the end.
    if (free_slots_ >= claim_threshold()) wake.swap(starving_);
  }
  for (auto& weak : wake) {
    if (auto state = weak.lock()) {
      {
        std::lock_guard lock(state->mu);
        state->claim_wanted = true;
      }
      state->cv.notify_all();
    }
  }
}

void Engine::wake(std::string_view slug) {
  for (const auto& state : states()) {
    if (state->key.slug != slug) continue;
    {
      std::lock_guard lock(state->mu);
      state->claim_wanted = true;
    }
    state->cv.notify_all();
  }
}

void Engine::wake_all() {
  for (const auto& state : states()) {
    {
      std::lock_guard lock(state->mu);
      state->claim_wanted = true;
    }
    state->cv.notify_all();
  }
}

void Engine::dispatch(const std::shared_ptr<LoopState>& state, ClaimedTask task) {
  {
    std::lock_guard lock(state->mu);
    state->held[task.id] = HeldTask{task.attempt, task.timeout, std::nullopt, false};
  }
  auto shared_task = std::make_shared<ClaimedTask>(std::move(task));
  HandlerPool::Job job;
  job.run = [this, state, shared_task] { run_task(state, *shared_task); };
  job.cancel = [this, state, shared_task] {
    {
      std::lock_guard lock(state->mu);
      state->held.erase(shared_task->id);
    }
    {
      std::lock_guard lock(mu_);
      releases_.push_back(Release{shared_task->id, shared_task->attempt, false});
      ++report_.released_unstarted;
    }
    release_slots(1);
  };
  if (!pool_.submit(std::move(job))) {
    // Closed: the worker is finishing. Give the task back rather than drop it.
    {
      std::lock_guard lock(state->mu);
      state->held.erase(shared_task->id);
    }
    {
      std::lock_guard lock(mu_);
      releases_.push_back(Release{shared_task->id, shared_task->attempt, false});
    }
    release_slots(1);
  }
}

void Engine::run_task(const std::shared_ptr<LoopState>& state, const ClaimedTask& task) {
  {
    std::lock_guard lock(state->mu);
    auto it = state->held.find(task.id);
    if (it != state->held.end()) it->second.running_since = Clock::now();
  }
  HandlerOutcome outcome;
  auto handler = state->handlers.find(task.step_slug);
  if (handler == state->handlers.end() || !handler->second) {
    outcome = {HandlerOutcome::Status::permanent,
               fmt::format("no handler for step '{}' in this worker", task.step_slug)};
  } else {
    const nlohmann::json context = {{"run_id", task.run_id},
                                    {"flow", task.flow_slug},
                                    {"step", task.step_slug},
                                    {"task_index", task.task_index},
                                    {"attempt", task.attempt}};
    outcome = handler->second.invoke(task.input.dump(), context.dump());
  }

  std::optional<Completion> completion;
  std::optional<Failure> failure;
  switch (outcome.status) {
    case HandlerOutcome::Status::ok: {
      auto output = nlohmann::json::parse(outcome.body, nullptr, /*allow_exceptions=*/false);
      if (output.is_discarded()) {
        failure = Failure{task.id, task.attempt,
                          fmt::format("handler '{}' returned invalid JSON", handler->second.name()),
                          true};
      } else {
        completion = Completion{task.id, task.attempt, std::move(output)};
      }
      break;
    }
    case HandlerOutcome::Status::retry:
      failure = Failure{task.id, task.attempt, std::move(outcome.body), false};
      break;
    case HandlerOutcome::Status::permanent:
      failure = Failure{task.id, task.attempt, std::move(outcome.body), true};
      break;
  }

  bool recorded = false;
  {
    std::lock_guard lock(state->mu);
    auto it = state->held.find(task.id);
    if (it != state->held.end()) {
      if (!it->second.abandoned) {
        if (state->completions.empty() && state->failures.empty())
          state->first_result_at = Clock::now();
        if (completion) state->completions.push_back(std::move(*completion));
        if (failure) state->failures.push_back(std::move(*failure));
        recorded = true;
      }
      state->held.erase(it);
    }
  }
  if (!recorded)
    spdlog::warn(
        "worker {}: task {} of {} step '{}' ended after it was given up (timed out or "
        "lease lost); its result is dropped",
        options_.worker_id, task.id, state->label, task.step_slug);
  state->cv.notify_all();
  release_slots(1);
  if (recorded) {
    bool retired = false;
    {
      std::lock_guard lock(state->mu);
      retired = state->retired;
    }
    if (retired) {
      std::lock_guard lock(mu_);
      stop_cv_.notify_all();  // the keeper records it
    }
  }
}

void Engine::begin_drain() {
  {
    std::lock_guard lock(mu_);
    if (draining_) return;
    draining_ = true;
  }
  pool_.cancel_queued();  // their cancel callbacks queue releases
  flush_releases();
  std::lock_guard lock(mu_);
  stop_cv_.notify_all();
}

bool Engine::draining() const {
  std::lock_guard lock(mu_);
  return draining_;
}

int Engine::held() const {
  int n = 0;
  for (const auto& state : states()) {
    std::lock_guard lock(state->mu);
    n += static_cast<int>(state->held.size() + state->completions.size() + state->failures.size());
  }
  return n;
}

void Engine::set_served(std::vector<FlowKey> flows) {
  std::lock_guard lock(mu_);
  served_ = std::move(flows);
}

DrainReport Engine::finish(SteadyTime pool_deadline) {
  {
    std::lock_guard lock(mu_);
    if (finished_) return report_;
    finished_ = true;
    draining_ = true;
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (notifier_.joinable()) notifier_.join();
  if (keeper_.joinable()) keeper_.join();

  // Handlers still running are given up: their tasks go back to the database now.
  pool_.cancel_queued();
  const bool all_ended = pool_.close_and_wait(pool_deadline);
  std::vector<Release> running;
  for (const auto& state : states()) {
    std::lock_guard lock(state->mu);
    state->retired = true;
    for (auto& [id, task] : state->held) {
      if (task.abandoned) continue;  // timed out (its failure is in the outbox) or lease lost
      task.abandoned = true;         // a result arriving later is dropped
      running.push_back(Release{id, task.attempt, task.running_since.has_value()});
    }
  }
  {
    std::lock_guard lock(mu_);
    report_.released_running += static_cast<int>(
        std::count_if(running.begin(), running.end(), [](const Release& r) { return r.ran; }));
    releases_.insert(releases_.end(), running.begin(), running.end());
  }
  if (!all_ended)
    spdlog::warn(
        "worker {}: {} handler(s) still running at the deadline; their tasks are given "
        "back to other workers",
        options_.worker_id, pool_.running());
  flush_retired();
  flush_releases();
  heartbeat(/*stopped=*/true);
  std::lock_guard lock(mu_);
  return report_;
}

void Engine::nap(Millis d) {
  std::unique_lock lock(mu_);
  stop_cv_.wait_for(lock, d, [&] { return stopping_; });
}

void Engine::notifier_main() {
  std::optional<Listener> listener;
  Millis backoff = options_.reconnect_min;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
    }
    if (!listener) {
      auto connected = Listener::connect(options_.conninfo, {std::string(kTasksChannel)});
      if (!connected) {
        spdlog::debug("worker {}: listening for tasks: {}", options_.worker_id,
                      connected.error().format());
        nap(backoff);
        backoff = std::min(backoff * 2, options_.reconnect_max);
        continue;
      }
      listener.emplace(std::move(*connected));
      backoff = options_.reconnect_min;
      wake_all();  // notifications may have been missed while not listening
    }
    auto n = listener->wait(Millis(200));
    if (!n) {
      listener.reset();
      continue;
    }
    if (*n) wake((*n)->payload);
  }
}

void Engine::keeper_main() {
  const Millis tick = std::clamp(options_.lease / 10, Millis(10), Millis(250));
  const Millis renew_every = std::max(options_.lease / 3, Millis(1));
  auto next_renew = Clock::now() + renew_every;
  auto next_heartbeat = Clock::now();
  for (;;) {
    {
      std::unique_lock lock(mu_);
      stop_cv_.wait_for(lock, tick, [&] { return stopping_; });
      if (stopping_) return;
    }
    const auto now = Clock::now();
    const bool renew_due = now >= next_renew;
    const bool heartbeat_due = now >= next_heartbeat;
    if (renew_due) next_renew = now + renew_every;
    if (heartbeat_due) next_heartbeat = now + options_.heartbeat_interval;
    keeper_tick(renew_due, heartbeat_due);
  }
}

void Engine::keeper_tick(bool renew_due, bool heartbeat_due) {
  const auto now = Clock::now();
  std::vector<TaskAttempt> renew;
  std::unordered_map<TaskId, std::shared_ptr<LoopState>> owner;
  for (const auto& state : states()) {
    bool timed_out = false;
    {
      std::lock_guard lock(state->mu);
      for (auto& [id, task] : state->held) {
        if (task.abandoned) continue;
        if (task.running_since && now - *task.running_since >= task.timeout) {
          task.abandoned = true;
          state->failures.push_back(
              Failure{id, task.attempt,
                      fmt::format("timed out: no result within the step timeout of {} ms",
                                  task.timeout.count()),
                      false});
          timed_out = true;
          spdlog::warn(
              "worker {}: task {} of {} timed out after {} ms; its handler thread stays "
              "busy until the handler returns",
              options_.worker_id, id, state->label, task.timeout.count());
          continue;
        }
        if (renew_due) {
          renew.push_back(TaskAttempt{id, task.attempt});
          owner.emplace(id, state);
        }
      }
    }
    if (timed_out) state->cv.notify_all();
  }
  if (!renew.empty()) {
    auto rejected = stores_.with(
        [&](RunStore& s) { return s.renew(options_.worker_id, renew, options_.lease); });
    if (rejected) {
      for (TaskId id : *rejected) {
        auto it = owner.find(id);
        if (it == owner.end()) continue;
        std::lock_guard lock(it->second->mu);
        if (auto held = it->second->held.find(id); held != it->second->held.end()) {
          held->second.abandoned = true;
          spdlog::warn(
              "worker {}: lost the lease of task {} of {} (it was claimed again "
              "elsewhere); its result will be dropped",
              options_.worker_id, id, it->second->label);
        }
      }
    } else {
      spdlog::debug("worker {}: {}", options_.worker_id, rejected.error().format());
    }
  }
  flush_retired();
  flush_releases();
  if (heartbeat_due) heartbeat(false);
}

bool Engine::flush_retired() {
  bool ok = true;
  std::vector<std::shared_ptr<LoopState>> done;
  for (const auto& state : states()) {
    std::vector<Completion> completions;
    std::vector<Failure> failures;
    {
      std::lock_guard lock(state->mu);
      if (!state->retired) continue;
      completions.swap(state->completions);
      failures.swap(state->failures);
    }
    if (!completions.empty() || !failures.empty()) {
      auto r = stores_.with([&](RunStore& s) {
        return s.work(options_.worker_id, completions, failures, {}, 0, options_.lease);
      });
      if (!r) {
        if (r.error().code == Errc::unavailable) {
          ok = false;
          std::lock_guard lock(state->mu);  // keep them for the next try
          state->completions.insert(state->completions.begin(), completions.begin(),
                                    completions.end());
          state->failures.insert(state->failures.begin(), failures.begin(), failures.end());
        } else {
          spdlog::error(
              "worker {}: results of {} not recorded: {}; their tasks run again when "
              "their leases expire",
              options_.worker_id, state->label, r.error().format());
        }
      } else {
        std::lock_guard lock(mu_);
        report_.results_recorded += static_cast<int>(completions.size() + failures.size());
      }
    }
    std::lock_guard lock(state->mu);
    if (state->held.empty() && state->completions.empty() && state->failures.empty())
      done.push_back(state);
  }
  if (!done.empty()) {
    std::lock_guard lock(mu_);
    std::erase_if(states_, [&](const std::shared_ptr<LoopState>& s) {
      return std::find(done.begin(), done.end(), s) != done.end();
    });
  }
  return ok;
}

bool Engine::flush_releases() {
  std::vector<Release> releases;
  {
    std::lock_guard lock(mu_);
    releases.swap(releases_);
  }
  if (releases.empty()) return true;
  auto r = stores_.with([&](RunStore& s) { return s.release(options_.worker_id, releases); });
  if (r) return true;
  if (r.error().code == Errc::unavailable) {
    std::lock_guard lock(mu_);
    releases_.insert(releases_.end(), releases.begin(), releases.end());
    return false;
  }
  spdlog::error("worker {}: giving tasks back: {}; they run again when their leases expire",
                options_.worker_id, r.error().format());
  return true;
}

void Engine::heartbeat(bool stopped) {
  WorkerRecord record;
  record.id = options_.worker_id;
  static const std::string host = hostname();
  record.host = host;
  record.pid = static_cast<int>(getpid());
  record.concurrency = options_.concurrency;
  {
    std::lock_guard lock(mu_);
    record.flows = served_;
  }
  auto r = stores_.with([&](RunStore& s) { return s.heartbeat(record, stopped); });
  if (!r) spdlog::debug("worker {}: heartbeat: {}", options_.worker_id, r.error().format());
}

}  // namespace flowreg::detail
