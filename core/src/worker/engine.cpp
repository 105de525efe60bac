#include "worker/engine.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <iterator>
#include <utility>

#include "config/yaml_json.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxErrorBytes = 64 * 1024;

// How often a held task's lease is renewed: a third of the lease it gets, min(timeout, lease).
Millis renew_period(Millis timeout, Millis lease) {
  const Millis granted = timeout.count() > 0 ? std::min(timeout, lease) : lease;
  return std::max(granted / 3, Millis(1));
}

// `text` with every NUL byte replaced by U+FFFD: PostgreSQL holds no NUL in text nor U+0000 in
// jsonb (SQLSTATE 22P05), and one such string refuses the whole batch it is recorded with.
std::string without_nul(std::string text) {
  if (text.find('\0') == std::string::npos) return text;
  std::string out;
  out.reserve(text.size() + 8);
  for (const char c : text) {
    if (c == '\0')
      out += "\xEF\xBF\xBD";
    else
      out += c;
  }
  return out;
}

// Replaces U+0000 in every string and object key of `j` by U+FFFD. REQUIRES: `j` nests a bounded
// number of levels (this recurses once per level).
void replace_nul(nlohmann::json& j) {
  if (j.is_string()) {
    auto& text = j.get_ref<std::string&>();
    if (text.find('\0') != std::string::npos) text = without_nul(std::move(text));
  } else if (j.is_array()) {
    for (auto& element : j) replace_nul(element);
  } else if (j.is_object()) {
    bool in_keys = false;
    for (auto it = j.begin(); it != j.end(); ++it) {
      in_keys = in_keys || it.key().find('\0') != std::string::npos;
      replace_nul(it.value());
    }
    if (!in_keys) return;
    nlohmann::json fixed = nlohmann::json::object();
    for (auto it = j.begin(); it != j.end(); ++it)
      fixed[without_nul(it.key())] = std::move(it.value());
    j = std::move(fixed);
  }
}

std::string hostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace

Engine::Engine(WorkerOptions options)
    : options_(std::move(options)),
      stores_(options_.conninfo, options_.store_connections),
      keeper_stores_(options_.conninfo, 1),
      pool_(options_.concurrency) {
  if (!options_.journal_dir.empty()) {
    // The journals of dead workers first (this one's is not there yet), reported before any
    // claim: a crashed task whose lease expired would otherwise be claimed again at once.
    auto leftovers = TaskJournal::collect(options_.journal_dir);
    for (auto& l : leftovers) leftovers_.push_back(std::move(l));
    auto journal = TaskJournal::open(options_.journal_dir);
    if (journal) {
      journal_ = std::move(*journal);
    } else {
      spdlog::warn("worker {}: no crash journal, crashes will not be attributed: {}",
                   options_.worker_id, journal.error().format());
    }
    report_crashes();
  }
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

int Engine::capacity_locked() const {
  const int healthy = options_.concurrency - stuck_;
  return healthy > 0 ? healthy + std::max(1, options_.loop_lanes) * options_.batch_size : 0;
}

std::string Engine::state() const {
  std::lock_guard lock(mu_);
  return stuck_ >= options_.concurrency ? "stuck" : "running";
}

int Engine::acquire_slots(int wanted, const std::shared_ptr<LoopState>& state) {
  std::lock_guard lock(mu_);
  const int got = std::clamp(capacity_locked() - in_use_, 0, std::max(wanted, 0));
  in_use_ += got;
  if (got == 0) starving_.push_back(state);
  return got;
}

void Engine::take_results(LoopState& state, std::vector<Completion>& completions,
                          std::vector<Failure>& failures) {
  failures.swap(state.failures);  // error texts are short (cut in run_task)
  std::size_t bytes = 0, n = 0;
  while (n < state.completions.size() &&
         (n == 0 || bytes + state.completions[n].bytes <= kMaxRecordBytes))
    bytes += state.completions[n++].bytes;
  if (n == state.completions.size()) {
    completions.swap(state.completions);
    return;
  }
  completions.assign(std::make_move_iterator(state.completions.begin()),
                     std::make_move_iterator(state.completions.begin() + static_cast<long>(n)));
  state.completions.erase(state.completions.begin(),
                          state.completions.begin() + static_cast<long>(n));
  if (!state.completions.empty()) state.first_result_at = Clock::now();
}

void Engine::forget_results(LoopState& state, const std::vector<Completion>& completions,
                            const std::vector<Failure>& failures) {
  if (completions.empty() && failures.empty()) return;
  std::lock_guard lock(state.mu);
  const auto forget = [&](TaskId id) {
    auto it = state.held.find(id);
    if (it != state.held.end() && it->second.result_pending) state.held.erase(it);
  };
  for (const auto& c : completions) forget(c.id);
  for (const auto& f : failures) forget(f.id);
}

int Engine::claim_threshold() const noexcept { return std::max(1, options_.batch_size / 2); }

void Engine::release_slots(int n) {
  if (n <= 0) return;
  std::vector<std::weak_ptr<LoopState>> wake;
  {
    std::lock_guard lock(mu_);
    in_use_ -= n;
    // Starved loops are woken once half a batch is free, not for every finished handler (a claim
    // per handler would cost a round trip each). All slots free is more than that, so a starved
    // loop is always woken in the end.
    if (capacity_locked() - in_use_ >= claim_threshold()) wake.swap(starving_);
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
    HeldTask held;
    held.attempt = task.attempt;
    held.timeout = task.timeout;
    held.next_renew = Clock::now() + renew_period(task.timeout, options_.lease);
    state->held[task.id] = held;
  }
  auto shared_task = std::make_shared<ClaimedTask>(std::move(task));
  HandlerPool::Job job;
  job.run = [this, state, shared_task] { run_task(state, *shared_task); };
  job.fail = [this, state, shared_task](std::string what) {
    fail_task(state, *shared_task,
              fmt::format("step '{}': the worker failed running its handler: {}",
                          shared_task->step_slug, what));
  };
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
    if (journal_) journal_->begin(task.id, task.attempt);
    // The slot is cleared however the call ends (HandlerPool turns an exception into a failure).
    struct JournalEnd {
      TaskJournal* journal;
      ~JournalEnd() {
        if (journal) journal->end();
      }
    } journal_end{journal_.get()};
    outcome = handler->second.invoke(json_text(task.input), json_text(context));
  }

  std::optional<Completion> completion;
  std::optional<Failure> failure;
  switch (outcome.status) {
    case HandlerOutcome::Status::ok: {
      const std::size_t limit = std::min(options_.max_output_bytes, kMaxOutputBytes);
      if (outcome.body.size() > limit) {
        failure = Failure{task.id, task.attempt,
                          fmt::format("handler '{}' returned {} bytes of output, over the limit of "
                                      "{} bytes (worker.max_output_bytes, --max-output)",
                                      handler->second.name(), outcome.body.size(), limit),
                          true};
        break;
      }
      // Bounded before parsing: the parser is iterative, but everything that handles the value
      // afterwards (serializing it for the store, on the flow loop's thread) recurses per level.
      const int max_depth = YamlLimits{}.max_depth;
      if (nesting_beyond(outcome.body, static_cast<std::size_t>(max_depth))) {
        failure = Failure{task.id, task.attempt,
                          fmt::format("handler '{}' returned output nested deeper than {} levels",
                                      handler->second.name(), max_depth),
                          true};
        break;
      }
      auto output = nlohmann::json::parse(outcome.body, nullptr, /*allow_exceptions=*/false);
      if (output.is_discarded()) {
        failure = Failure{task.id, task.attempt,
                          fmt::format("handler '{}' returned invalid JSON", handler->second.name()),
                          true};
      } else {
        // Only text that spells the escape can hold U+0000 (a raw NUL byte is invalid JSON):
        // outputs without it, nearly all, are not walked.
        if (outcome.body.find("\\u0000") != std::string::npos) replace_nul(output);
        completion = Completion{task.id, task.attempt, std::move(output), outcome.body.size()};
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
  record_result(state, task, std::move(completion), std::move(failure));
}

void Engine::fail_task(const std::shared_ptr<LoopState>& state, const ClaimedTask& task,
                       std::string error) {
  {
    // Thrown after its result was queued (by logging, say): that result stands.
    std::lock_guard lock(state->mu);
    auto it = state->held.find(task.id);
    if (it != state->held.end() && it->second.result_pending) return;
  }
  record_result(state, task, std::nullopt,
                Failure{task.id, task.attempt, utf8_valid(error), /*permanent=*/true});
}

void Engine::record_result(const std::shared_ptr<LoopState>& state, const ClaimedTask& task,
                           std::optional<Completion> completion, std::optional<Failure> failure) {
  if (failure) failure->error = without_nul(std::move(failure->error));
  // An error message is for people: a huge one is cut (it would weigh on every round trip).
  if (failure && failure->error.size() > kMaxErrorBytes)
    failure->error = std::string(utf8_prefix(failure->error, kMaxErrorBytes)) +
                     fmt::format(" [... cut: {} bytes in all]", failure->error.size());

  bool recorded = false;
  bool was_stuck = false;
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
        it->second.result_pending = true;  // held (and its lease renewed) until recorded
      } else {
        was_stuck = it->second.stuck;
        state->held.erase(it);
      }
    }
  }
  if (was_stuck) {
    {
      std::lock_guard lock(mu_);
      --stuck_;
    }
    spdlog::info(
        "worker {}: the handler of task {} of {} returned after its timeout; its thread "
        "is free again",
        options_.worker_id, task.id, state->label);
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
    n += static_cast<int>(state->held.size());
    // Results whose task is no longer held: timed out (the failure is the keeper's).
    for (const auto& c : state->completions) n += state->held.count(c.id) ? 0 : 1;
    for (const auto& f : state->failures) n += state->held.count(f.id) ? 0 : 1;
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
      if (task.abandoned) continue;       // timed out (its failure is in the outbox) or lease lost
      if (task.result_pending) continue;  // its result is recorded below
      task.abandoned = true;              // a result arriving later is dropped
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
  // A clean stop leaves no journal. Handlers left running were given back above; should one of
  // them crash the process now, nothing is attributed to it.
  if (journal_) journal_->close();
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
  const Millis renew_every = renew_period(Millis(0), options_.lease);
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

// Every held task is renewed on the keeper's cadence (a third of the lease), in one statement; a
// task whose step timeout is shorter than the lease gets a shorter lease, so it is renewed on its
// own cadence too (else its lease would lapse before its timeout fails it).
void Engine::keeper_tick(bool renew_due, bool heartbeat_due) {
  const auto now = Clock::now();
  std::vector<TaskAttempt> renew;
  std::unordered_map<TaskId, std::shared_ptr<LoopState>> owner;
  int newly_stuck = 0;
  for (const auto& state : states()) {
    bool timed_out = false;
    {
      std::lock_guard lock(state->mu);
      for (auto& [id, task] : state->held) {
        if (task.abandoned) continue;
        if (task.running_since && !task.result_pending &&
            now - *task.running_since >= task.timeout) {
          task.abandoned = true;
          task.stuck = true;
          ++newly_stuck;
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
        if (renew_due || now >= task.next_renew) {
          task.next_renew = now + renew_period(task.timeout, options_.lease);
          renew.push_back(TaskAttempt{id, task.attempt});
          owner.emplace(id, state);
        }
      }
    }
    if (timed_out) state->cv.notify_all();
  }
  if (newly_stuck > 0) {
    bool all_stuck = false;
    {
      std::lock_guard lock(mu_);
      const bool was_all = stuck_ >= options_.concurrency;
      stuck_ += newly_stuck;
      all_stuck = !was_all && stuck_ >= options_.concurrency;
    }
    if (all_stuck) {
      // Nothing can start here any more: what waits for a thread goes to other workers now.
      const std::size_t given_back = pool_.cancel_queued();
      spdlog::error(
          "worker {}: all {} handler threads are held by handlers that timed out and never "
          "returned; it claims nothing until one returns (state stuck), and gave back {} "
          "task(s) that waited for a thread",
          options_.worker_id, options_.concurrency, given_back);
      heartbeat_due = true;
    }
  }
  if (!renew.empty()) {
    auto rejected = keeper_stores_.with([&](RunStore& s) {
      return s.renew(options_.worker_id, renew, options_.lease, /*skip_locked=*/true);
    });
    if (rejected) {
      for (TaskId id : *rejected) {
        auto it = owner.find(id);
        if (it == owner.end()) continue;
        std::lock_guard lock(it->second->mu);
        if (auto held = it->second->held.find(id);
            held != it->second->held.end() && !held->second.result_pending) {
          held->second.abandoned = true;
          spdlog::warn(
              "worker {}: lost the lease of task {} of {} (it was claimed again "
              "elsewhere); its result will be dropped",
              options_.worker_id, id, it->second->label);
        }
      }
    } else {
      spdlog::debug("worker {}: {}", options_.worker_id, rejected.error().format());
      if (rejected.error().code == Errc::unavailable) database_unreachable();
    }
  }
  flush_retired();
  flush_releases();
  if (heartbeat_due) heartbeat(false);
  report_crashes();
}

bool Engine::report_crashes() {
  std::vector<TaskJournal::Leftover> pending;
  {
    std::lock_guard lock(mu_);
    if (leftovers_.empty()) return true;
    pending.swap(leftovers_);
  }
  std::vector<CrashReport> reports;
  for (const auto& l : pending)
    reports.insert(reports.end(), l.entries().begin(), l.entries().end());
  auto outcome = keeper_stores_.with(
      [&](RunStore& s) { return s.report_crashes(reports, options_.crash_limit); });
  if (!outcome) {
    spdlog::debug("worker {}: reporting crashed handlers: {}", options_.worker_id,
                  outcome.error().format());
    std::lock_guard lock(mu_);
    for (auto& l : pending) leftovers_.push_back(std::move(l));
    return false;
  }
  for (const auto& o : *outcome) {
    if (o.kind == CrashOutcome::Kind::stale) continue;
    const auto r = std::find_if(reports.begin(), reports.end(),
                                [&](const CrashReport& c) { return c.id == o.id; });
    if (o.kind == CrashOutcome::Kind::failed && r != reports.end() && r->signal)
      spdlog::warn("worker {}: task {} failed: its handler crashed a worker (signal {})",
                   options_.worker_id, o.id, *r->signal);
    else if (o.kind == CrashOutcome::Kind::failed)
      spdlog::warn("worker {}: task {} failed: it was running in {} workers that died",
                   options_.worker_id, o.id, options_.crash_limit);
    else
      spdlog::info("worker {}: task {} was running in a worker that died; crash counted",
                   options_.worker_id, o.id);
  }
  for (auto& l : pending) l.discard();
  return true;
}

void Engine::database_unreachable() {
  if (!options_.revive_database) return;
  const auto now = Clock::now();
  if (now < next_revive_) return;
  next_revive_ = now + std::max(options_.reconnect_max, Millis(1'000));
  if (auto revived = options_.revive_database(); !revived)
    spdlog::warn("worker {}: the database is unreachable and could not be started: {}",
                 options_.worker_id, revived.error().format());
  else
    spdlog::info("worker {}: the database was unreachable; it runs again", options_.worker_id);
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
      take_results(*state, completions, failures);
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
          forget_results(*state, completions, failures);
        }
      } else {
        forget_results(*state, completions, failures);
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
  record.heartbeat_interval = options_.heartbeat_interval;
  record.state = state();
  {
    std::lock_guard lock(mu_);
    record.flows = served_;
  }
  auto r = keeper_stores_.with([&](RunStore& s) { return s.heartbeat(record, stopped); });
  if (!r) {
    spdlog::debug("worker {}: heartbeat: {}", options_.worker_id, r.error().format());
    if (!stopped && r.error().code == Errc::unavailable) database_unreachable();
  }
}

}  // namespace flowreg::detail
