#include "worker/engine.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>

#include "config/yaml_json.hpp"
#include "logging/json_log.hpp"
#include "util/host_name.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"
#include "worker/store_pool.hpp"

namespace flowreg::detail {

namespace {

constexpr std::size_t kMaxErrorBytes = 64 * 1024;

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

}  // namespace

EngineParts EngineParts::postgres(const WorkerOptions& options) {
  EngineParts parts;
  parts.store = std::make_shared<StorePool>(options.conninfo, options.store_connections);
  parts.keeper_store = std::make_shared<StorePool>(options.conninfo, 1);
  return parts;
}

Engine::Engine(WorkerOptions options, EngineParts parts)
    : options_(std::move(options)),
      parts_(std::move(parts)),
      pool_(options_.concurrency, /*cap=*/options_.concurrency) {
  if (!options_.journal_dir.empty()) {
    // The journals of dead workers first (this one's is not there yet), reported before any
    // claim: a crashed task whose lease expired would otherwise be claimed again at once.
    auto leftovers = TaskJournal::collect(options_.journal_dir);
    {
      MutexLock lock(mu_);
      for (auto& l : leftovers) leftovers_.push_back(std::move(l));
    }
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
  lanes_ = std::make_unique<Lanes>(options_, *parts_.store, *this);
}

Engine::~Engine() { finish(SteadyTime::max()); }

void Engine::attach(const std::shared_ptr<FlowState>& state) {
  MutexLock lock(mu_);
  states_.push_back(state);
  if (state->in_processes()) ++process_flows_;
}

void Engine::retire(const std::shared_ptr<FlowState>& state) {
  state->retire();  // the keeper's next tick records its outbox
}

std::vector<std::shared_ptr<FlowState>> Engine::states() const {
  MutexLock lock(mu_);
  return states_;
}

int Engine::capacity_locked() const {
  // A handler that timed out keeps its thread and its slot; the pool replaces up to `concurrency`
  // such threads, and each one beyond that leaves a thread fewer.
  const int healthy = options_.concurrency - std::max(0, stuck_ - options_.concurrency);
  // Threads that run tasks in handler processes several at a time (dispatch()) hold that many.
  const int ahead = process_flows_ > 0 ? static_cast<int>(kWrittenAheadMin) : 1;
  return healthy > 0 ? healthy * ahead + stuck_ + std::max(1, options_.lanes) * options_.batch_size
                     : 0;
}

int Engine::share_locked() const {
  // FlowState::stopping() and stuck() read atomics: no FlowState lock is taken under the engine's.
  const auto served =
      std::count_if(states_.begin(), states_.end(), [](const auto& s) { return !s->stopping(); });
  return std::max(1, options_.concurrency / static_cast<int>(std::max<std::ptrdiff_t>(served, 1)));
}

bool Engine::may_claim(const FlowState& state) const {
  if (state.stuck() == 0) return true;  // every task's path: no lock, no walk of the flows
  MutexLock lock(mu_);
  return state.stuck() < share_locked();
}

std::string Engine::state() const {
  MutexLock lock(mu_);
  return replacing_ ? "replacing" : due_reason_ ? "stuck" : "running";
}

std::optional<std::string> Engine::replacement_due() const {
  MutexLock lock(mu_);
  return due_reason_;
}

void Engine::begin_replacing() {
  {
    MutexLock lock(mu_);
    if (replacing_) return;
    replacing_ = true;
  }
  heartbeat(false);  // `flowreg workers` says so while it drains
  begin_drain();
}

// Whether the worker should be replaced by a new process: the reason, or nullopt.
std::optional<std::string> Engine::replacement_reason() const {
  const int healthy = pool_.healthy();
  MutexLock lock(mu_);
  if (stuck_ <= 0) return std::nullopt;
  if (healthy < options_.concurrency)
    return fmt::format(
        "{} handlers timed out and never returned, more than the {} abandoned threads a worker "
        "replaces: only {} of its {} handler threads can run handlers",
        stuck_, options_.concurrency, std::max(healthy, 0), options_.concurrency);
  const int share = share_locked();
  int served = 0;
  for (const auto& s : states_) {
    if (s->stopping()) continue;
    if (s->stuck() < share) return std::nullopt;  // this flow still claims
    ++served;
  }
  if (served == 0) return std::nullopt;
  return fmt::format(
      "each of the {} flow version(s) it serves holds its share of {} handler thread(s) with "
      "handlers that timed out and never returned: it would claim nothing more",
      served, share);
}

int Engine::acquire_slots(int wanted, const std::shared_ptr<FlowState>& state) {
  MutexLock lock(mu_);
  // The share is counted over the flows served only when a flow at hand has a stuck handler
  // (nearly never): a worker serving hundreds of flow versions does not walk them on every claim.
  // The flows' own counts are read, not the engine's stuck_: the keeper marks a task stuck in its
  // flow before it counts it here.
  const auto stuck = [](const std::weak_ptr<FlowState>& weak) {
    auto s = weak.lock();
    return s && s->stuck() > 0;
  };
  const bool counted =
      (state && state->stuck() > 0) || std::any_of(starving_.begin(), starving_.end(), stuck);
  const int share = counted ? share_locked() : std::numeric_limits<int>::max();
  // A flow at its share of threads held by handlers that timed out claims nothing here (its tasks
  // stay queued for other workers), and does not starve: the others claim as usual.
  std::erase_if(starving_, [share](const std::weak_ptr<FlowState>& weak) {
    auto s = weak.lock();
    return !s || s->stopping() || s->stuck() >= share;
  });
  if (state && state->stuck() >= share) return 0;
  // Fair share: the flows that found no room take the slots freed, in the order they starved;
  // until the first of them got some, every other caller gets none (and starves in its turn).
  const bool first = state && !starving_.empty() && starving_.front().lock() == state;
  int got = std::clamp(capacity_locked() - in_use_, 0, std::max(wanted, 0));
  if (!starving_.empty() && !first) got = 0;
  in_use_ += got;
  if (got > 0 && first) {
    starving_.erase(starving_.begin());
  } else if (got == 0 && state &&
             std::none_of(starving_.begin(), starving_.end(),
                          [&](const auto& weak) { return weak.lock() == state; })) {
    starving_.push_back(state);
  }
  return got;
}

void Engine::release_slots(int n) {
  if (n <= 0) return;
  std::vector<std::weak_ptr<FlowState>> wake;
  {
    MutexLock lock(mu_);
    in_use_ -= n;
    // Starved flows are woken once half a batch is free, not for every finished handler (a claim
    // per handler would cost a round trip each). All slots free is more than that, so a starved
    // flow is always woken in the end. They stay starving until they get slots.
    if (capacity_locked() - in_use_ >= std::max(1, options_.batch_size / 2)) wake = starving_;
  }
  for (auto& weak : wake)
    if (auto state = weak.lock()) state->want_claim();
}

void Engine::dispatch(const std::shared_ptr<FlowState>& state, ClaimedTask task) {
  std::vector<ClaimedTask> one;
  one.push_back(std::move(task));
  dispatch(state, std::move(one));
}

void Engine::dispatch(const std::shared_ptr<FlowState>& state, std::vector<ClaimedTask> tasks) {
  if (tasks.empty()) return;
  std::vector<std::shared_ptr<ClaimedTask>> held;
  held.reserve(tasks.size());
  const auto claimed = std::chrono::steady_clock::now();
  for (auto& task : tasks) {
    state->hold(task, parts_.now() + renew_period(task.timeout, options_.lease));
    held.push_back(std::make_shared<ClaimedTask>(std::move(task)));
  }
  // Tasks of one pool of handler processes whose tasks have lately been quick go to its processes
  // several at a time (HandlerProcessPool::invoke_all): as many per job as spreads the claim over
  // the threads, at least kWrittenAheadMin (a thread that wakes once for 8 quick tasks does more
  // than 8 threads that wake once each: measured in docs/performance.md), at most kWrittenAhead.
  const std::size_t threads = static_cast<std::size_t>(std::max(1, pool_.healthy()));
  const std::size_t spread = (held.size() + threads - 1) / threads;
  const std::size_t per_job = std::min(std::max(spread, kWrittenAheadMin), kWrittenAhead);
  std::vector<HandlerPool::Job> jobs;
  jobs.reserve(held.size());
  for (std::size_t at = 0; at < held.size();) {
    std::size_t end = at + 1;
    if (per_job > 1 && state->in_processes()) {  // under threads: no lookup per task
      const StepHandler* first = state->handler(held[at]->step_slug);
      if (first && first->process && first->process->quick()) {
        while (end < held.size() && end - at < per_job) {
          const StepHandler* h = state->handler(held[end]->step_slug);
          if (!h || h->process != first->process) break;
          ++end;
        }
      }
    }
    if (end - at == 1) {
      jobs.push_back(task_job(state, held[at], claimed));
    } else {
      jobs.push_back(process_job(state,
                                 std::vector<std::shared_ptr<ClaimedTask>>(
                                     held.begin() + static_cast<std::ptrdiff_t>(at),
                                     held.begin() + static_cast<std::ptrdiff_t>(end)),
                                 claimed));
    }
    at = end;
  }
  // Closed: the worker is finishing. Give the tasks back rather than drop them.
  if (!pool_.submit_all(std::move(jobs)))
    for (const auto& task : held) give_back(*state, *task, /*count_unstarted=*/false);
}

HandlerPool::Job Engine::task_job(const std::shared_ptr<FlowState>& state,
                                  std::shared_ptr<ClaimedTask> task,
                                  std::chrono::steady_clock::time_point claimed) {
  HandlerPool::Job job;
  job.run = [this, state, task, claimed] {
    // Its flow reached its share of threads held by handlers that timed out while this task
    // waited for a thread: back to the database, for other workers.
    if (!may_claim(*state)) return give_back(*state, *task, /*count_unstarted=*/false);
    run_task(state, *task, claimed);
  };
  job.fail = [this, state, task](std::string what) { fail_unrecorded(state, *task, what); };
  job.cancel = [this, state, task] { give_back(*state, *task, /*count_unstarted=*/true); };
  return job;
}

void Engine::fail_unrecorded(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                             const std::string& what) {
  // Thrown after its result was queued (by logging, say): that result stands.
  if (state->result_queued(task.id)) return;
  record_result(
      state, task, std::nullopt,
      Failure{task.id, task.attempt,
              utf8_valid(fmt::format("step '{}': the worker failed running its handler: {}",
                                     task.step_slug, what)),
              /*permanent=*/true});
}

HandlerPool::Job Engine::process_job(const std::shared_ptr<FlowState>& state,
                                     std::vector<std::shared_ptr<ClaimedTask>> tasks,
                                     std::chrono::steady_clock::time_point claimed) {
  auto shared = std::make_shared<std::vector<std::shared_ptr<ClaimedTask>>>(std::move(tasks));
  // How many of them started (their handler was written to and its time began): the others are
  // given back when the job fails.
  auto begun = std::make_shared<std::size_t>(0);
  HandlerPool::Job job;
  job.run = [this, state, shared, begun, claimed] {
    if (!may_claim(*state)) {
      for (const auto& task : *shared) give_back(*state, *task, /*count_unstarted=*/false);
      return;
    }
    run_in_process(state, *shared, claimed, *begun);
  };
  job.fail = [this, state, shared, begun](std::string what) {
    for (std::size_t i = 0; i < shared->size(); ++i) {
      if (i < *begun)
        fail_unrecorded(state, *(*shared)[i], what);
      else
        give_back(*state, *(*shared)[i], /*count_unstarted=*/false);
    }
  };
  job.cancel = [this, state, shared] {
    for (const auto& task : *shared) give_back(*state, *task, /*count_unstarted=*/true);
  };
  return job;
}

void Engine::give_back(FlowState& state, const ClaimedTask& task, bool count_unstarted) {
  if (!state.give_back(task.id)) return;
  {
    MutexLock lock(mu_);
    releases_.push_back(Release{task.id, task.attempt, false});
    if (count_unstarted) ++report_.released_unstarted;
  }
  release_slots(1);
}

void Engine::run_task(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                      std::chrono::steady_clock::time_point claimed) {
  const logging::LogScope log_scope(
      {options_.worker_id, task.flow_slug, task.step_slug, task.run_id, {}});
  state->started(task.id, parts_.now());
  const StepHandler* handler = state->handler(task.step_slug);
  if (!handler) {
    record_result(
        state, task, std::nullopt,
        Failure{task.id, task.attempt,
                fmt::format("no handler for step '{}' in this worker", task.step_slug), true});
    return;
  }
  HandlerOutcome outcome;
  std::optional<ProcessFacts> facts;
  {
    if (journal_) journal_->begin(task.id, task.attempt);
    // The slot is cleared however the call ends (HandlerPool turns an exception into a failure).
    struct JournalEnd {
      TaskJournal* journal;
      ~JournalEnd() {
        if (journal) journal->end();
      }
    } journal_end{journal_.get()};
    const auto entered = std::chrono::steady_clock::now();
    if (handler->metrics)
      handler->metrics->latency_seconds.observe(metrics::seconds(entered - claimed));
    if (handler->process) {
      outcome = handler->process->invoke(
          handler->process_index, json_text(task.input), context_text(task), task.timeout,
          TaskTag{task.flow_slug, task.step_slug, task.run_id, task.id}, facts.emplace());
      record_process_facts(*facts);
    } else {
      outcome = handler->invoke(json_text(task.input), context_text(task));
    }
    if (handler->metrics)
      handler->metrics->task_seconds.observe(
          metrics::seconds(std::chrono::steady_clock::now() - entered));
  }
  finish_task(state, task, *handler, std::move(outcome), facts ? &*facts : nullptr);
}

std::string Engine::context_text(const ClaimedTask& task) {
  const nlohmann::json context = {{"run_id", task.run_id},
                                  {"flow", task.flow_slug},
                                  {"step", task.step_slug},
                                  {"task_index", task.task_index},
                                  {"attempt", task.attempt}};
  return json_text(context);
}

void Engine::run_in_process(const std::shared_ptr<FlowState>& state,
                            const std::vector<std::shared_ptr<ClaimedTask>>& tasks,
                            std::chrono::steady_clock::time_point claimed, std::size_t& begun) {
  const std::size_t n = tasks.size();
  std::vector<const StepHandler*> handlers(n);
  std::vector<std::string> texts(2 * n);  // input, context: the views of `work` point here
  std::vector<ProcessTask> work(n);
  for (std::size_t i = 0; i < n; ++i) {
    const ClaimedTask& task = *tasks[i];
    handlers[i] = state->handler(task.step_slug);  // one pool's, as dispatch() checked
    texts[2 * i] = json_text(task.input);
    texts[2 * i + 1] = context_text(task);
    work[i] = ProcessTask{handlers[i]->process_index, texts[2 * i], texts[2 * i + 1], task.timeout,
                          TaskTag{task.flow_slug, task.step_slug, task.run_id, task.id}};
  }
  std::optional<logging::LogScope> log_scope;
  auto entered = std::chrono::steady_clock::now();
  const auto starting = [&](std::size_t i) {
    const ClaimedTask& task = *tasks[i];
    begun = i + 1;
    log_scope.reset();
    log_scope.emplace(
        logging::LogFields{options_.worker_id, task.flow_slug, task.step_slug, task.run_id, {}});
    state->started(task.id, parts_.now());
    if (journal_) journal_->begin(task.id, task.attempt);
    entered = std::chrono::steady_clock::now();
    if (handlers[i]->metrics)
      handlers[i]->metrics->latency_seconds.observe(metrics::seconds(entered - claimed));
  };
  const auto ended = [&](std::size_t i, HandlerOutcome outcome, const ProcessFacts& facts) {
    if (journal_) journal_->end();
    record_process_facts(facts);
    if (handlers[i]->metrics)
      handlers[i]->metrics->task_seconds.observe(
          metrics::seconds(std::chrono::steady_clock::now() - entered));
    finish_task(state, *tasks[i], *handlers[i], std::move(outcome), &facts);
  };
  handlers[0]->process->invoke_all(work, starting, ended);
}

namespace {

// What an attempt cost in its handler process, as the store keeps it; each count held to the
// column's range (a handler process reports its handler's time itself).
TaskProcess task_process(const ProcessFacts& facts) {
  const auto held = [](std::uint64_t n) {
    return static_cast<std::int64_t>(std::min<std::uint64_t>(n, std::int64_t{1} << 62));
  };
  TaskProcess p;
  p.pid = facts.pid;
  p.cpu_us = held(facts.cpu_us);
  p.max_rss_kb = held(facts.max_rss_kb);
  p.handler_us = held(facts.handler_us);
  if (facts.signal > 0)
    p.signal = facts.signal;
  else if (facts.killed)
    p.signal = SIGKILL;  // the worker ended it (a timeout, a broken channel): with SIGKILL
  if (facts.exit_status >= 0) p.exit_status = facts.exit_status;
  p.left_processes = facts.left_processes;
  return p;
}

}  // namespace

void Engine::finish_task(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                         const StepHandler& handler, HandlerOutcome outcome,
                         const ProcessFacts* facts) {
  auto [completion, failure] = result_of(task, handler, std::move(outcome));
  if (facts && facts->pid > 0) {
    if (completion) completion->process = task_process(*facts);
    if (failure && !failure->snooze) failure->process = task_process(*facts);
  }
  spdlog::debug("worker {}: task {} of {} step '{}' attempt {}: {}", options_.worker_id, task.id,
                state->label(), task.step_slug, task.attempt,
                completion           ? "completed"
                : failure->snooze    ? "snoozed"
                : failure->permanent ? "failed"
                                     : "failed, to be retried");
  record_result(state, task, std::move(completion), std::move(failure));
}

std::pair<std::optional<Completion>, std::optional<Failure>> Engine::result_of(
    const ClaimedTask& task, const StepHandler& handler, HandlerOutcome outcome) const {
  const auto failed = [&](std::string error, bool permanent) {
    return std::make_pair(
        std::optional<Completion>(),
        std::optional<Failure>(Failure{task.id, task.attempt, std::move(error), permanent}));
  };
  switch (outcome.status) {
    case HandlerOutcome::Status::ok:
      break;
    case HandlerOutcome::Status::retry:
      return failed(std::move(outcome.body), false);
    case HandlerOutcome::Status::permanent:
      return failed(std::move(outcome.body), true);
    case HandlerOutcome::Status::snooze: {
      // The delay is the plugin's text: digits only, in range, else the attempt fails.
      const std::string& text = outcome.body;
      long long ms = 0;
      const bool digits =
          !text.empty() && text.size() <= 12 &&
          std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (digits) ms = std::stoll(text);
      if (!digits || ms < 1 || Millis{ms} > kMaxSnooze)
        return failed(fmt::format("handler '{}' asked to snooze for '{}' ms; a snooze is 1 ms to "
                                  "{} ms",
                                  handler.name, utf8_prefix(text, 40), kMaxSnooze.count()),
                      false);
      Failure snoozed{task.id, task.attempt, {}, false};
      snoozed.snooze = Millis{ms};
      return {std::nullopt, std::move(snoozed)};
    }
  }
  const std::size_t limit = std::min(options_.max_output_bytes, kMaxOutputBytes);
  if (outcome.body.size() > limit)
    return failed(fmt::format("handler '{}' returned {} bytes of output, over the limit of {} "
                              "bytes (worker.max_output_bytes, --max-output)",
                              handler.name, outcome.body.size(), limit),
                  true);
  // Bounded before parsing: the parser is iterative, but everything that handles the value
  // afterwards (serializing it for the store, on a lane's thread) recurses per level.
  const int max_depth = YamlLimits{}.max_depth;
  if (nesting_beyond(outcome.body, static_cast<std::size_t>(max_depth)))
    return failed(fmt::format("handler '{}' returned output nested deeper than {} levels",
                              handler.name, max_depth),
                  true);
  auto output = nlohmann::json::parse(outcome.body, nullptr, /*allow_exceptions=*/false);
  if (output.is_discarded())
    return failed(fmt::format("handler '{}' returned invalid JSON", handler.name), true);
  // Only text that spells the escape can hold U+0000 (a raw NUL byte is invalid JSON): outputs
  // without it, nearly all, are not walked.
  if (outcome.body.find("\\u0000") != std::string::npos) replace_nul(output);
  return {Completion{task.id, task.attempt, std::move(output), outcome.body.size()}, std::nullopt};
}

void Engine::record_process_facts(const ProcessFacts& facts) {
  if (!metrics::recording() || facts.pid == 0) return;
  metrics::handler_process_cpu().observe(static_cast<double>(facts.cpu_us) / 1e6);
  if (facts.max_rss_kb > 0)
    metrics::handler_process_rss().observe(static_cast<double>(facts.max_rss_kb) * 1024.0);
}

void Engine::record_result(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                           std::optional<Completion> completion, std::optional<Failure> failure) {
  if (failure) failure->error = without_nul(std::move(failure->error));
  // An error message is for people: a huge one is cut (it would weigh on every round trip).
  if (failure && failure->error.size() > kMaxErrorBytes)
    failure->error = std::string(utf8_prefix(failure->error, kMaxErrorBytes)) +
                     fmt::format(" [... cut: {} bytes in all]", failure->error.size());

  const auto put = state->put_result(task.id, std::move(completion), std::move(failure));
  if (put == FlowState::Put::dropped_stuck) {
    {
      MutexLock lock(mu_);
      --stuck_;
    }
    pool_.returned();     // the pool is above its target: a thread exits
    state->want_claim();  // its flow may be under its share again
    spdlog::info(
        "worker {}: the handler of task {} of {} returned after its timeout; its thread is free "
        "again",
        options_.worker_id, task.id, state->label());
  }
  if (put != FlowState::Put::queued)
    spdlog::warn(
        "worker {}: task {} of {} step '{}' ended after it was given up (timed out or lease "
        "lost); its result is dropped",
        options_.worker_id, task.id, state->label(), task.step_slug);
  release_slots(1);
}

void Engine::begin_drain() {
  if (draining_.exchange(true)) return;
  pool_.cancel_queued();  // their cancel callbacks queue releases
  flush_releases();
}

int Engine::held() const {
  int n = 0;
  for (const auto& state : states()) n += state->held();
  return n;
}

void Engine::set_served(std::vector<FlowKey> flows) {
  MutexLock lock(mu_);
  served_ = std::move(flows);
  ++served_changes_;
  stop_cv_.notify_all();  // the keeper's nap
}

bool Engine::await_heartbeat(Millis timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(mu_);
  while (!stopping_ && served_beaten_ != served_changes_) {
    if (stop_cv_.wait_until(lock, until) == std::cv_status::timeout)
      return !stopping_ && served_beaten_ == served_changes_;
  }
  return !stopping_;
}

DrainReport Engine::finish(SteadyTime pool_deadline) {
  {
    MutexLock lock(mu_);
    if (finished_) return report_;
    finished_ = true;
    stopping_ = true;
  }
  draining_ = true;
  stop_cv_.notify_all();
  lanes_->stop();  // their round trips in flight finish; no task is dispatched from here on
  if (notifier_.joinable()) notifier_.join();
  if (keeper_.joinable()) keeper_.join();

  // Handlers still running are given up: their tasks go back to the database now.
  pool_.cancel_queued();
  const bool all_ended = pool_.close_and_wait(pool_deadline);
  std::vector<Release> running;
  for (const auto& state : states()) {
    auto given_up = state->give_up_running();
    running.insert(running.end(), given_up.begin(), given_up.end());
  }
  {
    MutexLock lock(mu_);
    report_.released_running += static_cast<int>(
        std::count_if(running.begin(), running.end(), [](const Release& r) { return r.ran; }));
    releases_.insert(releases_.end(), running.begin(), running.end());
  }
  if (!all_ended)
    spdlog::warn(
        "worker {}: {} handler(s) still running at the deadline; their tasks are given back to "
        "other workers",
        options_.worker_id, pool_.running());
  flush_retired();
  flush_releases();
  heartbeat(/*stopped=*/true);
  // A clean stop leaves no journal. Handlers left running were given back above; should one of
  // them crash the process now, nothing is attributed to it.
  if (journal_) journal_->close();
  MutexLock lock(mu_);
  return report_;
}

void Engine::nap(Millis d) {
  const auto until = std::chrono::steady_clock::now() + d;
  MutexLock lock(mu_);
  while (!stopping_ && stop_cv_.wait_until(lock, until) != std::cv_status::timeout) {
  }
}

void Engine::notifier_main() {
  std::unique_ptr<TaskNotifications> listener;
  bool lost_listener = false;  // the next listen() is a reconnect
  Millis backoff = options_.reconnect_min;
  for (;;) {
    {
      MutexLock lock(mu_);
      if (stopping_) return;
    }
    if (!listener) {
      auto connected = parts_.store->listen();
      if (!connected) {
        spdlog::debug("worker {}: listening for tasks: {}", options_.worker_id,
                      connected.error().format());
        nap(backoff);
        backoff = std::min(backoff * 2, options_.reconnect_max);
        continue;
      }
      if (std::exchange(lost_listener, false)) metrics::database_reconnects().inc();
      listener = std::move(*connected);
      backoff = options_.reconnect_min;
      // Notifications may have been missed while not listening.
      for (const auto& state : states()) state->want_claim();
    }
    auto slug = listener->wait(Millis(200));
    if (!slug) {
      listener.reset();
      lost_listener = true;
      continue;
    }
    if (*slug)
      for (const auto& state : states())
        if (state->key().slug == **slug) state->want_claim();
  }
}

void Engine::keeper_main() {
  const Millis tick = std::clamp(options_.lease / 10, Millis(10), Millis(250));
  const Millis renew_every = renew_period(Millis(0), options_.lease);
  auto next_renew = parts_.now() + renew_every;
  auto next_heartbeat = parts_.now();
  for (;;) {
    bool served_changed = false;
    {
      // A nap of one tick, cut short by stopping or by a change of the flows served.
      const auto until = std::chrono::steady_clock::now() + tick;
      MutexLock lock(mu_);
      while (!stopping_ && served_beaten_ == served_changes_ &&
             stop_cv_.wait_until(lock, until) != std::cv_status::timeout) {
      }
      if (stopping_) return;
      served_changed = served_beaten_ != served_changes_;
    }
    const auto now = parts_.now();
    const bool renew_due = now >= next_renew;
    const bool heartbeat_due = served_changed || now >= next_heartbeat;
    if (renew_due) next_renew = now + renew_every;
    if (heartbeat_due) next_heartbeat = now + options_.heartbeat_interval;
    keeper_tick(renew_due, heartbeat_due);
  }
}

void Engine::keeper_tick(bool renew_due, bool heartbeat_due) {
  const auto now = parts_.now();
  std::vector<std::pair<std::shared_ptr<FlowState>, TaskAttempt>> due;
  int newly_stuck = 0;
  for (const auto& state : states()) {
    auto sweep = state->sweep(now, renew_due, options_.lease);
    for (const auto& t : sweep.timed_out) {
      // Counted first: the handler may return while its thread is being replaced.
      {
        MutexLock lock(mu_);
        ++stuck_;
      }
      const bool replaced = pool_.abandon();
      spdlog::warn(
          "worker {}: task {} of {} timed out after {} ms; its handler keeps its thread until it "
          "returns ({})",
          options_.worker_id, t.id, state->label(), t.timeout.count(),
          replaced ? "a replacement thread runs handlers meanwhile"
                   : "no replacement: the worker has abandoned as many threads as it may");
    }
    newly_stuck += static_cast<int>(sweep.timed_out.size());
    for (const auto& attempt : sweep.renew) due.emplace_back(state, attempt);
  }
  if (newly_stuck > 0 && pool_.healthy() <= 0) {
    bool all_stuck = false;
    {
      MutexLock lock(mu_);
      all_stuck = !all_held_;
      all_held_ = true;
    }
    if (all_stuck) {
      // Nothing can start here any more: what waits for a thread goes to other workers now.
      const std::size_t given_back = pool_.cancel_queued();
      spdlog::error(
          "worker {}: every handler thread is held by a handler that timed out and never "
          "returned; it claims nothing until one returns, and gave back {} task(s) that waited "
          "for a thread",
          options_.worker_id, given_back);
    }
  }
  bool any_stuck = false;
  {
    MutexLock lock(mu_);
    any_stuck = stuck_ > 0 || due_reason_;
  }
  if (any_stuck) {
    auto reason = replacement_reason();
    bool became_due = false;
    {
      MutexLock lock(mu_);
      became_due = reason && !due_reason_;
      due_reason_ = reason;
      if (!reason) all_held_ = false;
    }
    if (became_due) {
      spdlog::error("worker {}: it should be replaced by a new process (state stuck): {}",
                    options_.worker_id, *reason);
      heartbeat_due = true;
    }
  }
  if (!due.empty()) renew(due);
  flush_retired();
  flush_releases();
  if (heartbeat_due) heartbeat(false);
  report_crashes();
}

void Engine::renew(const std::vector<std::pair<std::shared_ptr<FlowState>, TaskAttempt>>& due) {
  std::vector<TaskAttempt> attempts;
  std::unordered_map<TaskId, FlowState*> owner;
  for (const auto& [state, attempt] : due) {
    attempts.push_back(attempt);
    owner.emplace(attempt.id, state.get());
  }
  auto rejected = parts_.keeper_store->renew(options_.worker_id, attempts, options_.lease);
  if (!rejected) {
    spdlog::debug("worker {}: {}", options_.worker_id, rejected.error().format());
    if (rejected.error().code == Errc::unavailable) database_unreachable();
    return;
  }
  for (TaskId id : *rejected) {
    auto it = owner.find(id);
    if (it != owner.end() && it->second->lose_lease(id))
      spdlog::warn(
          "worker {}: lost the lease of task {} of {} (it was claimed again elsewhere); its "
          "result will be dropped",
          options_.worker_id, id, it->second->label());
  }
}

bool Engine::report_crashes() {
  std::vector<TaskJournal::Leftover> pending;
  {
    MutexLock lock(mu_);
    if (leftovers_.empty()) return true;
    pending.swap(leftovers_);
  }
  std::vector<CrashReport> reports;
  for (const auto& l : pending)
    reports.insert(reports.end(), l.entries().begin(), l.entries().end());
  auto outcome = parts_.keeper_store->report_crashes(reports, options_.crash_limit);
  if (!outcome) {
    spdlog::debug("worker {}: reporting crashed handlers: {}", options_.worker_id,
                  outcome.error().format());
    MutexLock lock(mu_);
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
  const auto now = parts_.now();
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
  std::vector<std::shared_ptr<FlowState>> done;
  for (const auto& state : states()) {
    std::vector<Completion> completions;
    std::vector<Failure> failures;
    if (!state->take_retired(completions, failures)) continue;
    if (!completions.empty() || !failures.empty()) {
      auto r = parts_.store->work(options_.worker_id, completions, failures, {}, 0, options_.lease);
      if (r) {
        state->forget(completions, failures);
        MutexLock lock(mu_);
        report_.results_recorded += static_cast<int>(completions.size() + failures.size());
      } else if (r.error().code == Errc::unavailable) {
        ok = false;
        state->put_back(std::move(completions), std::move(failures));  // for the next try
      } else {
        spdlog::error(
            "worker {}: results of {} not recorded: {}; their tasks run again when their leases "
            "expire",
            options_.worker_id, state->label(), r.error().format());
        state->forget(completions, failures);
      }
    }
    if (state->idle()) done.push_back(state);
  }
  if (!done.empty()) {
    MutexLock lock(mu_);
    int in_processes = 0;  // counted here: the analysis of -Wthread-safety sees no lock inside
    std::erase_if(states_, [&](const std::shared_ptr<FlowState>& s) {
      const bool gone = std::find(done.begin(), done.end(), s) != done.end();
      if (gone && s->in_processes()) ++in_processes;
      return gone;
    });
    process_flows_ -= in_processes;
  }
  return ok;
}

bool Engine::flush_releases() {
  std::vector<Release> releases;
  {
    MutexLock lock(mu_);
    releases.swap(releases_);
  }
  if (releases.empty()) return true;
  auto r = parts_.store->release(options_.worker_id, releases);
  if (r) return true;
  if (r.error().code == Errc::unavailable) {
    MutexLock lock(mu_);
    releases_.insert(releases_.end(), releases.begin(), releases.end());
    return false;
  }
  spdlog::error("worker {}: giving tasks back: {}; they run again when their leases expire",
                options_.worker_id, r.error().format());
  return true;
}

void Engine::set_process_stats(std::function<std::optional<Json>()> stats) {
  MutexLock lock(mu_);
  process_stats_ = std::move(stats);
}

void Engine::heartbeat(bool stopped) {
  static const std::string host = host_name();
  WorkerRecord record;
  record.id = options_.worker_id;
  record.host = host;
  record.pid = static_cast<int>(getpid());
  record.concurrency = options_.concurrency;
  record.heartbeat_interval = options_.heartbeat_interval;
  record.state = state();
  std::uint64_t changes = 0;
  std::function<std::optional<Json>()> process_stats;
  {
    MutexLock lock(mu_);
    record.flows = served_;
    changes = served_changes_;
    process_stats = process_stats_;
  }
  if (process_stats) record.handler_processes = process_stats();
  auto r = parts_.keeper_store->heartbeat(record, stopped);
  {
    MutexLock lock(mu_);
    served_beaten_ = changes;
    stop_cv_.notify_all();  // await_heartbeat
  }
  if (!r) {
    spdlog::debug("worker {}: heartbeat: {}", options_.worker_id, r.error().format());
    if (!stopped && r.error().code == Errc::unavailable) database_unreachable();
  }
}

}  // namespace flowreg::detail
