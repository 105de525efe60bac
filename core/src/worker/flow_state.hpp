#pragma once
// A flow state: what one flow version served by a worker shares between its flow service, the
// lanes and the engine: the tasks it holds, the outbox of their results, and the signals that wake
// the lanes (lanes.hpp) for it. The lanes take results out and put claims in; the engine's handler
// threads put results in; the keeper renews, times out and, once the state retired, records what
// is left. A FlowState outlives its flow service (flow_service.hpp): handlers still running when
// the service stops put their results here, and the keeper records them.
//
// A held task is claimed and its result not recorded yet: it waits for a thread, runs, or its
// result waits in the outbox (result_pending) or is being recorded. Its lease is renewed until
// then. A task given up (timed out, lease lost, given back at shutdown) is `abandoned`: a result
// arriving later is dropped.
//
// Thread-safety: every member function may be called concurrently. Lock order: this state's mutex
// is never held while calling out (the `draining` callback of next_round excepted, which must not
// take a FlowState's mutex); the waker is called with no lock held.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "flowreg/plugins.hpp"
#include "flowreg/thread_annotations.hpp"
#include "metrics/metrics.hpp"
#include "store/run_store.hpp"
#include "worker/handler_process.hpp"

namespace flowreg::detail {

using SteadyTime = std::chrono::steady_clock::time_point;

// The code a step runs: a plugin's handler in production (it keeps the plugin's code loaded as
// long as a copy lives), any function in tests.
struct StepHandler {
  std::string name;  // "module.handler", in messages
  std::function<HandlerOutcome(std::string_view input_json, std::string_view context_json)> invoke;
  metrics::StepSeries* metrics = nullptr;  // the step's histograms; null: not recorded
  // isolation: process: the pool of handler processes its plugin runs in, and the handler's
  // number there (`invoke` is then not called); null: isolation thread.
  std::shared_ptr<HandlerProcessPool> process;
  std::uint32_t process_index = 0;
};
StepHandler step_handler(HandlerRef ref);
// A sleep step's (docs/flows.md#sleep-steps): its task is claimed only once its sleep has ended
// (migration 0025: it is created available then), so it completes at once, with output
// {"woke_at": the time it was claimed, RFC 3339 UTC}. Runs on the calling thread whatever the
// flow's isolation.
StepHandler sleep_handler();
// A wait step's (docs/flows.md#wait-steps): its one task exists only with a timeout and is
// claimable only once the timeout has ended (a signal or event that came first deleted it), so it
// ends the step: with its default output, else failed for good ("timed out after 2d waiting for
// signal 'approve'"). Runs on the calling thread whatever the flow's isolation.
StepHandler wait_handler(const StepDef& step);
// A flow step's tasks (migration 0028) are its child runs' ends, handed back by the database as
// their inputs ({run, flow, status, output, error}): each completes with the child's output, or
// fails permanently with its error.
StepHandler child_handler();

// How often a held task's lease is renewed: a third of the lease it gets, min(timeout, lease).
Millis renew_period(Millis timeout, Millis lease);

class FlowState {
 public:
  FlowState(FlowKey key, std::unordered_map<std::string, StepHandler> handlers);
  FlowState(const FlowState&) = delete;
  FlowState& operator=(const FlowState&) = delete;

  const FlowKey& key() const noexcept { return key_; }
  const std::string& label() const noexcept { return label_; }  // "slug@version"
  // The handler of a step of this flow version, or nullptr.
  const StepHandler* handler(const std::string& step) const;
  // A step's handler runs in handler processes (isolation: process).
  bool in_processes() const noexcept { return in_processes_; }

  // ---- The lanes' side (and the flow service's: stop, retire).
  // Called (with no lock held) whenever a round may be due: a claim wanted, a result put back, a
  // task timed out, stopping, and a result queued when it is the outbox's first (the lanes then
  // set its flush timer), fills it to flush_at, or leaves no task running; not for the results
  // in between (a wake-up each, for nothing to do, cost more than their handlers). Empty: nothing
  // is called.
  void set_waker(std::function<void()> waker, std::size_t flush_at = 1);
  // There may be tasks to claim (a notification, capacity freed, a full claim): wakes the lanes.
  void want_claim();
  // No more round trips for this flow version (wakes the lanes). The flow service then retires the
  // state: the keeper records its outbox from then on.
  void stop();
  bool stopping() const noexcept { return stop_requested_; }
  void retire();

  // What a lane does next: stop, or a round trip recording `completions` and `failures` (taken
  // out of the outbox, at most kMaxRecordBytes of outputs) and claiming when want_claim.
  struct Round {
    bool stop = false;
    bool want_claim = false;
    std::vector<Completion> completions;
    std::vector<Failure> failures;
  };
  // Waits until stopping, a flush is due, a claim is wanted (and not draining), or next_poll.
  // Results are recorded in batches: at once when no handler of this flow runs, else once
  // `flush_at` results wait or the first has waited flush_delay (they ride with the next claim).
  Round next_round(SteadyTime next_poll, std::size_t flush_at, Millis flush_delay,
                   const std::function<bool()>& draining);
  // The same without waiting, for the lanes: the round due now (stop; or results to record and
  // whether to claim: a claim wanted or poll_due, unless draining), or nullopt when none is, with
  // `wake` set to when the results waiting will be due (SteadyTime::max() when none wait).
  std::optional<Round> take_round(bool poll_due, std::size_t flush_at, Millis flush_delay,
                                  bool draining, SteadyTime& wake);
  // A round trip failed: its results go back to the front of the outbox (recorded by the next
  // round trip), and a claim is wanted again.
  void put_back(std::vector<Completion> completions, std::vector<Failure> failures);
  // A round trip recorded these results (or gave up on them): their tasks are no longer held.
  void forget(const std::vector<Completion>& completions, const std::vector<Failure>& failures);
  // For the keeper: the outbox of a retired state (as next_round takes it); false when not retired.
  bool take_retired(std::vector<Completion>& completions, std::vector<Failure>& failures);

  // ---- The engine's side.
  // A claimed task is held from now on.
  void hold(const ClaimedTask& task, SteadyTime next_renew);
  // Its handler starts.
  void started(TaskId id, SteadyTime now);
  // A task that never started is given back: true the first time (it is no longer held), false
  // when it was not held (given back already, or never held).
  bool give_back(TaskId id);
  // Puts a finished task's result (exactly one of the two) in the outbox, unless the task was
  // given up.
  enum class Put { queued, dropped, dropped_stuck, unknown };
  Put put_result(TaskId id, std::optional<Completion> completion, std::optional<Failure> failure);
  // True when the task's result is in the outbox or being recorded.
  bool result_queued(TaskId id) const;
  // Whether the outbox holds results.
  bool has_results() const;
  // Tasks held, and results waiting whose task is no longer held (timed out: the failure is the
  // keeper's to record). A task whose handler timed out counts until its failure is recorded, not
  // until its handler returns (nothing waits for that: a drain does not wait for it).
  int held() const;
  // Nothing held and nothing to record: the engine may drop the state.
  bool idle() const;
  // Handlers of this flow version that timed out and have not returned (each holds a thread);
  // readable under other locks.
  int stuck() const noexcept { return stuck_count_; }

  // ---- The keeper's side.
  struct Sweep {
    std::vector<TaskAttempt> renew;  // leases due for renewal
    struct TimedOut {
      TaskId id;
      Millis timeout;
    };
    std::vector<TimedOut> timed_out;  // failed now: their handlers still hold their threads
  };
  // Fails (in the outbox) the tasks whose handler ran past its timeout and marks them stuck; the
  // leases to renew: all when renew_all, else those due by their own cadence.
  Sweep sweep(SteadyTime now, bool renew_all, Millis lease);
  // The lease of a task was lost (claimed again elsewhere): true when its result will be dropped.
  bool lose_lease(TaskId id);
  // At shutdown: retires the state and gives up every held task whose result is not queued; the
  // tasks to give back (ran: its handler had started).
  std::vector<Release> give_up_running();

  // The most bytes of outputs one round trip records: PostgreSQL refuses a JSON parameter over
  // 255 MiB, and one round trip should not hold a lease hostage for long.
  static constexpr std::size_t kMaxRecordBytes = std::size_t{64} << 20;
  // How long after its timeout a process-isolated task is given up by the keeper, when the thread
  // that kills its process has not come back (killing and reaping a process group takes at most
  // a few seconds).
  static constexpr Millis kProcessGrace{5'000};

 private:
  struct HeldTask {
    int attempt = 0;
    Millis timeout{0};
    // A process-isolated handler is killed at its timeout by the thread waiting for it; the keeper
    // gives it up only this much later (the thread never came back).
    Millis grace{0};
    std::optional<SteadyTime> running_since;  // set when its handler starts
    bool abandoned = false;       // timed out, lease lost or given back: its result will be dropped
    bool stuck = false;           // timed out: its handler still holds a thread
    bool result_pending = false;  // its result is in the outbox or being recorded
    SteadyTime next_renew{};
  };

  void take_results(std::vector<Completion>& completions, std::vector<Failure>& failures)
      FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  bool flush_due(std::size_t flush_at, Millis flush_delay) const
      FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));

  const FlowKey key_;
  const std::string label_;
  const std::unordered_map<std::string, StepHandler> handlers_;  // by step slug
  const bool in_processes_;

  mutable AnnotatedMutex mu_;
  std::condition_variable_any cv_;  // outbox filled, claim wanted, stopping
  std::function<void()> waker_ FLOWREG_GUARDED_BY(mu_);
  std::size_t flush_at_ FLOWREG_GUARDED_BY(mu_) = 1;
  std::atomic<bool> stop_requested_{false};  // stopping_, readable under other locks
  std::atomic<int> stuck_count_{0};          // held_ entries with stuck, and stuck_orphans_
  // Attempts that timed out, whose task was claimed again (held_ holds the new attempt) while
  // their handlers still run.
  std::vector<TaskAttempt> stuck_orphans_ FLOWREG_GUARDED_BY(mu_);
  std::unordered_map<TaskId, HeldTask> held_ FLOWREG_GUARDED_BY(mu_);
  std::size_t pending_ FLOWREG_GUARDED_BY(mu_) = 0;  // held_ entries with result_pending
  std::vector<Completion> completions_ FLOWREG_GUARDED_BY(mu_);  // the outbox
  std::vector<Failure> failures_ FLOWREG_GUARDED_BY(mu_);        // the outbox
  // When the outbox last became non-empty (by the steady clock: lanes wait on it).
  SteadyTime first_result_at_ FLOWREG_GUARDED_BY(mu_);
  bool claim_wanted_ FLOWREG_GUARDED_BY(mu_) = true;
  bool stopping_ FLOWREG_GUARDED_BY(mu_) = false;
  bool retired_ FLOWREG_GUARDED_BY(mu_) = false;
};

}  // namespace flowreg::detail
