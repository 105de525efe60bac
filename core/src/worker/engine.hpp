#pragma once
// The engine: the parts of a worker that live as long as its process, whatever flow versions it
// serves: the handler threads, the task capacity, the lanes that make every flow's round trips
// (lanes.hpp), the notification listener and the keeper (lease renewal, step timeouts,
// heartbeats, crash reports, results of flows no longer served).
//
// A flow service (flow_service.hpp) puts one flow version in the lanes, which claim its tasks and
// hand them to the engine (dispatch: the engine is the lanes' LaneHost, and the lanes know it by
// that interface only), which runs each on the pool and puts its result in the flow's outbox
// (FlowState); the lanes record outboxes and claim more in one round trip (WorkerStore::work).
// When a flow service stops (its plugin was replaced, it failed, the worker drains), its handlers
// still running finish on the code they started with (each job holds its FlowState, whose handlers
// keep their plugin loaded), and the keeper records their results.
//
// The engine is given its collaborators: the store the lanes and the keeper use for their round
// trips (the keeper has its own, so renewals never wait for a lane's round trip) and a clock (step
// timeouts and lease renewals are judged by it).
//
// Thread-safety: every member function may be called concurrently. Lock order: a FlowState's mutex
// is never held while the engine's is taken, nor the other way round; the engine's is never held
// while calling into the lanes.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/thread_annotations.hpp"
#include "worker/flow_state.hpp"
#include "worker/handler_pool.hpp"
#include "worker/lanes.hpp"
#include "worker/task_journal.hpp"
#include "worker/worker_options.hpp"
#include "worker/worker_store.hpp"

namespace flowreg::detail {

struct DrainReport {
  int released_unstarted = 0;  // given back before their handler started
  int released_running = 0;    // handlers still running at the deadline
  int results_recorded = 0;    // recorded during finish()
};

struct EngineParts {
  std::shared_ptr<WorkerStore> store;         // the lanes' round trips, results of retired flows
  std::shared_ptr<WorkerStore> keeper_store;  // renewals, heartbeats, crash reports
  std::function<SteadyTime()> now = [] { return std::chrono::steady_clock::now(); };

  // PostgreSQL at options.conninfo: store_connections connections for the lanes, one for the
  // keeper.
  static EngineParts postgres(const WorkerOptions& options);
};

class Engine final : public LaneHost {
 public:
  // Starts the handler threads, the listener and the keeper.
  Engine(WorkerOptions options, EngineParts parts);
  ~Engine();  // finish(), waiting for running handlers however long they take
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const WorkerOptions& options() const noexcept { return options_; }
  const std::string& worker_id() const noexcept { return options_.worker_id; }
  WorkerStore& store() noexcept { return *parts_.store; }
  // The threads every flow's round trips run on.
  Lanes& lanes() noexcept { return *lanes_; }
  // "replacing" once begin_replacing() was called; "stuck" while replacement_due(); else
  // "running".
  std::string state() const;

  // Thread isolation's limits. A handler that runs past its step's timeout cannot be stopped: its
  // task fails, its thread stays with it (abandoned), and the pool starts a replacement thread, so
  // that `concurrency` threads can still run handlers; at most `concurrency` threads are abandoned
  // at once (the cap). A flow version's share of the handler threads is
  // max(1, concurrency / flow versions served): while that many of its handlers timed out and have
  // not returned, it claims nothing here (its tasks stay queued for other workers; those it had
  // claimed and not started are given back), and the other flows run as usual.
  // The worker should be replaced by a new process (a process exec ends the abandoned threads) when
  // a handler times out beyond the cap (fewer than `concurrency` threads can run handlers), or
  // when every flow version it serves is at its share (it would claim nothing): the reason, or
  // nullopt. Re-evaluated by the keeper; no longer due once enough handlers returned.
  std::optional<std::string> replacement_due() const;
  // The front end replaces the worker: state "replacing" (a heartbeat says so at once), and
  // begin_drain(). Idempotent.
  void begin_replacing();
  // Whether `state`'s flow is under its share (it may claim); see replacement_due().
  bool may_claim(const FlowState& state) const override;

  // A flow service registers its state when it starts, and retires it when it stops: the keeper
  // records its outbox from then on, and drops it once nothing is held.
  void attach(const std::shared_ptr<FlowState>& state);
  void retire(const std::shared_ptr<FlowState>& state);

  // Capacity: with h threads able to run handlers (h = concurrency while at most concurrency
  // handlers that timed out still run, see replacement_due(); one fewer for each beyond that), at
  // most h + lanes * batch_size tasks held at once (h * kWrittenAheadMin + lanes * batch_size
  // while a flow served runs handlers in processes: a thread runs that many there at once, see
  // dispatch()), besides the slots of handlers that timed out,
  // so that each lane can claim a whole batch while the other's round trip is in flight (with room
  // for one batch only, two lanes split it and every round trip carries half as much); with h = 0,
  // none: a worker whose threads are all stuck claims nothing and gives back what waits for a
  // thread. A stuck handler keeps its slot until it returns. A flow at its share (see
  // replacement_due()) gets none, and does not starve. acquire takes up to `wanted` slots; when it
  // gets none, `state` starves: it is woken (want_claim) whenever batch_size / 2 are free, until it
  // gets some. Fair share: starving flows take the slots freed in the order they starved, and while
  // one starves every other caller gets none (and starves in its turn), so slots freed by a flooded
  // flow's handlers go to the flows that waited, not back to the flood. `state` may be null (a
  // claim across flows): it gets slots only while none starves, and is never woken.
  int acquire_slots(int wanted, const std::shared_ptr<FlowState>& state) override;
  void release_slots(int n) override;

  // The largest handler output a worker accepts, whatever it is told: PostgreSQL stores at most
  // 255 MiB in one JSON value, and a run's output holds its leaf steps' outputs.
  static constexpr std::size_t kMaxOutputBytes = std::size_t{128} << 20;
  // The longest snooze a handler may ask for (flowreg::sdk::snooze): 366 days.
  static constexpr Millis kMaxSnooze{366LL * 24 * 3600 * 1000};

  // Runs a task claimed for `state`'s flow on the pool. REQUIRES: a slot acquired for it.
  void dispatch(const std::shared_ptr<FlowState>& state, ClaimedTask task);
  // The tasks of one claim, queued on the pool together (one lock, one wake-up per thread needed).
  void dispatch(const std::shared_ptr<FlowState>& state, std::vector<ClaimedTask> tasks) override;

  // Graceful shutdown. begin_drain: no lane claims any more; tasks not started are given back to
  // the database at once. held(): tasks still held (running, or results not recorded).
  // finish(): gives back what still runs, records the results there are, marks the worker
  // stopped, stops the listener and the keeper. Idempotent.
  void begin_drain();
  bool draining() const noexcept override { return draining_; }
  int held() const;
  DrainReport finish(SteadyTime pool_deadline);

  // Where heartbeats read the state of the worker's handler processes (isolation: process), summed
  // over its pools; unset or nullopt: none (WorkerRecord::handler_processes).
  void set_process_stats(std::function<std::optional<Json>()> stats);

  // What the flows served are, for heartbeats: the keeper writes a heartbeat with them at once.
  void set_served(std::vector<FlowKey> flows);
  // Waits up to `timeout` until a heartbeat carrying the flows last set_served has been written
  // (or tried: the database may be away), so that `flowreg workers` lists what the worker
  // announces. False on timeout or when stopping.
  bool await_heartbeat(Millis timeout);

 private:
  void notifier_main();
  void keeper_main();
  void keeper_tick(bool renew_due, bool heartbeat_due);
  void mark_stuck(int newly_stuck);
  void renew(const std::vector<std::pair<std::shared_ptr<FlowState>, TaskAttempt>>& due);
  std::vector<std::shared_ptr<FlowState>> states() const;
  // A pool job running one task (run_task).
  HandlerPool::Job task_job(const std::shared_ptr<FlowState>& state,
                            std::shared_ptr<ClaimedTask> task,
                            std::chrono::steady_clock::time_point claimed);
  // A pool job running tasks of one pool of handler processes, written to a process together
  // (run_in_process).
  HandlerPool::Job process_job(const std::shared_ptr<FlowState>& state,
                               std::vector<std::shared_ptr<ClaimedTask>> tasks,
                               std::chrono::steady_clock::time_point claimed);
  // Tasks written to a handler process together (see dispatch()), when its pool is quick(): at
  // least the first (or all there are), at most the second. A handler that hangs delays at most
  // kWrittenAhead - 1 tasks behind it, by its timeout; they then run in a fresh process.
  static constexpr std::size_t kWrittenAheadMin = 8;
  static constexpr std::size_t kWrittenAhead = 16;
  // `claimed`: when the task was dispatched (its start latency is measured from then).
  void run_task(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                std::chrono::steady_clock::time_point claimed);
  // Runs `tasks` (handlers of one pool of handler processes) through HandlerProcessPool::
  // invoke_all; `begun` counts the tasks started.
  void run_in_process(const std::shared_ptr<FlowState>& state,
                      const std::vector<std::shared_ptr<ClaimedTask>>& tasks,
                      std::chrono::steady_clock::time_point claimed, std::size_t& begun);
  // The handler's context argument: run, flow, step, task index, attempt.
  static std::string context_text(const ClaimedTask& task);
  // Records the result of a handler's outcome, with what it cost in its handler process (facts:
  // null for a handler run on a thread), kept with the attempt.
  void finish_task(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                   const StepHandler& handler, HandlerOutcome outcome,
                   const ProcessFacts* facts = nullptr);
  // A task whose job threw: failed for good, unless its result was queued already.
  void fail_unrecorded(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                       const std::string& what);
  // The result of a handler's outcome: a completion, or a failure naming the handler.
  std::pair<std::optional<Completion>, std::optional<Failure>> result_of(
      const ClaimedTask& task, const StepHandler& handler, HandlerOutcome outcome) const;
  // The metrics of a task run in a handler process.
  static void record_process_facts(const ProcessFacts& facts);
  // Queues the result of a task that ran (exactly one of the two), unless it was given up.
  void record_result(const std::shared_ptr<FlowState>& state, const ClaimedTask& task,
                     std::optional<Completion> completion, std::optional<Failure> failure);
  // A task that never started goes back to the database (once, however often this is called).
  void give_back(FlowState& state, const ClaimedTask& task, bool count_unstarted);
  // Records results of retired flows and pending releases; false when the database is unreachable.
  bool flush_retired();
  bool flush_releases();
  void heartbeat(bool stopped);
  // Reports the crash journals of dead workers (before claiming, then by the keeper until the
  // database takes them); false while some remain.
  bool report_crashes();
  // The database could not be reached: lets revive_database try (rate-limited).
  void database_unreachable();
  int capacity_locked() const FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  // A flow version's share of the handler threads: max(1, concurrency / flow versions served).
  int share_locked() const FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  // What replacement_due() will say, computed now.
  std::optional<std::string> replacement_reason() const;
  // Sleeps up to `d` unless stopping.
  void nap(Millis d);

  const WorkerOptions options_;
  const EngineParts parts_;
  HandlerPool pool_;
  std::unique_ptr<TaskJournal> journal_;  // null: no journal_dir
  SteadyTime next_revive_{};              // keeper only
  std::atomic<bool> draining_{false};

  mutable AnnotatedMutex mu_;
  std::condition_variable_any stop_cv_;  // stopping; served_changes_ and served_beaten_
  std::vector<TaskJournal::Leftover> leftovers_ FLOWREG_GUARDED_BY(mu_);  // dead workers' journals
  std::vector<std::shared_ptr<FlowState>> states_ FLOWREG_GUARDED_BY(mu_);
  // Flows that wanted slots and got none, in the order they starved, until they get some (or
  // stop).
  std::vector<std::weak_ptr<FlowState>> starving_ FLOWREG_GUARDED_BY(mu_);
  std::vector<Release> releases_ FLOWREG_GUARDED_BY(mu_);  // to give back
  std::vector<FlowKey> served_ FLOWREG_GUARDED_BY(mu_);
  // set_served calls, and how many of them the last heartbeat carried (the keeper writes one at
  // once when they differ; await_heartbeat waits for them to meet, on stop_cv_).
  std::uint64_t served_changes_ FLOWREG_GUARDED_BY(mu_) = 0;
  std::uint64_t served_beaten_ FLOWREG_GUARDED_BY(mu_) = 0;
  std::function<std::optional<Json>()> process_stats_ FLOWREG_GUARDED_BY(mu_);
  int in_use_ FLOWREG_GUARDED_BY(mu_) = 0;         // slots taken
  int process_flows_ FLOWREG_GUARDED_BY(mu_) = 0;  // states_ in_processes()
  int stuck_ FLOWREG_GUARDED_BY(mu_) = 0;          // threads held by handlers that timed out
  bool all_held_ FLOWREG_GUARDED_BY(mu_) = false;  // no thread could run a handler (logged once)
  std::optional<std::string> due_reason_ FLOWREG_GUARDED_BY(mu_);  // replacement_due()
  bool replacing_ FLOWREG_GUARDED_BY(mu_) = false;
  bool stopping_ FLOWREG_GUARDED_BY(mu_) = false;
  bool finished_ FLOWREG_GUARDED_BY(mu_) = false;
  DrainReport report_ FLOWREG_GUARDED_BY(mu_);

  std::thread notifier_;
  std::thread keeper_;
  std::unique_ptr<Lanes> lanes_;  // started last, stopped first by finish()
};

}  // namespace flowreg::detail
