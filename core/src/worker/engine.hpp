#pragma once
// The parts of a worker that live as long as its process, whatever the supervision tree restarts:
// the handler threads, the task capacity, the run-store connections, the notification listener
// and the keeper (lease renewal, step timeouts, heartbeats, results of stopped loops).
//
// A flow loop (flow_loop.hpp) claims tasks of one flow version and hands them to the engine, which
// runs them on the pool and puts each result in the loop's outbox; the loop records outboxes and
// claims more in one round trip (RunStore::work). A loop's LoopState outlives the loop: when a
// loop stops (its plugin was replaced, it failed, the worker drains), its handlers still running
// finish on the code they started with (each job holds its HandlerRef), and the keeper records
// their results; the old plugin code stays mapped (plugin code is never unloaded).
//
// Thread-safety: every member function may be called concurrently. Lock order: a LoopState::mu
// may be held while Engine::mu_ is taken (a loop asks draining()); never the other way round: the
// engine copies what it needs under mu_ and locks a loop's state after releasing it.

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "flowreg/plugins.hpp"
#include "worker/handler_pool.hpp"
#include "worker/store_pool.hpp"
#include "worker/task_journal.hpp"
#include "worker/worker_options.hpp"

namespace flowreg::detail {

using SteadyTime = std::chrono::steady_clock::time_point;

// A claimed task whose result is not recorded yet. Its lease is renewed (every third of
// min(timeout, lease)) until then: while it waits for a thread, while its handler runs, and while
// its result waits in the outbox or is being recorded.
struct HeldTask {
  int attempt = 0;
  Millis timeout{0};
  std::optional<SteadyTime> running_since;  // set when its handler starts
  bool abandoned = false;                   // timed out or lease lost: its result will be dropped
  bool stuck = false;                       // timed out: its handler still holds a thread
  bool result_pending = false;              // its result is in the outbox or being recorded
  SteadyTime next_renew{};
};

// The shared state of one flow loop (one flow version).
struct LoopState {
  LoopState(FlowKey flow_key, std::unordered_map<std::string, HandlerRef> step_handlers)
      : key(std::move(flow_key)),
        label(key.slug + "@" + key.version),
        handlers(std::move(step_handlers)) {}

  const FlowKey key;
  const std::string label;                                     // "slug@version"
  const std::unordered_map<std::string, HandlerRef> handlers;  // by step slug

  std::mutex mu;
  std::condition_variable cv;                 // outbox filled, claim wanted, stopping
  std::unordered_map<TaskId, HeldTask> held;  // guarded by mu
  std::vector<Completion> completions;        // outbox, guarded by mu
  std::vector<Failure> failures;              // outbox, guarded by mu
  SteadyTime first_result_at;                 // when the outbox last became non-empty
  bool claim_wanted = true;  // a notification or a full claim: there may be tasks to claim
  bool stopping = false;     // the loop thread must exit
  bool retired = false;      // the loop stopped: the keeper records its outbox
};

struct DrainReport {
  int released_unstarted = 0;  // given back before their handler started
  int released_running = 0;    // handlers still running at the deadline
  int results_recorded = 0;    // recorded during finish()
};

class Engine {
 public:
  // Starts the handler threads, the listener and the keeper.
  explicit Engine(WorkerOptions options);
  ~Engine();  // finish(), waiting for running handlers however long they take
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const WorkerOptions& options() const noexcept { return options_; }
  // "running", or "stuck" while every handler thread is held by a handler that timed out.
  std::string state() const;
  const std::string& worker_id() const noexcept { return options_.worker_id; }
  StorePool& stores() noexcept { return stores_; }

  // A loop registers its state when it starts, and retires it when it stops.
  void attach(const std::shared_ptr<LoopState>& state);
  void retire(const std::shared_ptr<LoopState>& state);

  // Capacity: with h threads free of stuck handlers (h = concurrency - stuck), at most
  // h + loop_lanes * batch_size tasks held at once, so that each lane can claim a whole batch
  // while the other's round trip is in flight (with room for one batch only, two lanes split it
  // and every round trip carries half as much); with h = 0, none: a worker whose threads are all
  // stuck claims nothing and gives back what waits for a thread. A stuck handler keeps its slot
  // until it returns. acquire takes up to `wanted` slots; when it gets none, `state` is woken
  // (claim_wanted) once batch_size / 2 are free.
  int acquire_slots(int wanted, const std::shared_ptr<LoopState>& state);
  void release_slots(int n);

  // Moves results from state's outbox into `completions` and `failures`, at most
  // kMaxRecordBytes of outputs at once (at least one result): PostgreSQL refuses a JSON
  // parameter over 255 MiB, and one round trip should not hold a lease hostage for long.
  // REQUIRES: state.mu held.
  static void take_results(LoopState& state, std::vector<Completion>& completions,
                           std::vector<Failure>& failures);
  static constexpr std::size_t kMaxRecordBytes = std::size_t{64} << 20;
  // The largest handler output a worker accepts, whatever it is told: PostgreSQL stores at most
  // 255 MiB in one JSON value, and a run's output holds its leaf steps' outputs.
  static constexpr std::size_t kMaxOutputBytes = std::size_t{128} << 20;

  // After a round trip recorded these results (or gave up on them): their tasks are no longer
  // held. REQUIRES: state->mu not held.
  static void forget_results(LoopState& state, const std::vector<Completion>& completions,
                             const std::vector<Failure>& failures);

  // Runs a task claimed by `state`'s loop on the pool. REQUIRES: a slot acquired for it.
  void dispatch(const std::shared_ptr<LoopState>& state, ClaimedTask task);

  // Graceful shutdown. begin_drain: no loop claims any more; tasks not started are given back to
  // the database at once. held(): tasks still held (running, or results not recorded).
  // finish(): gives back what still runs, records the results there are, marks the worker
  // stopped, stops the listener and the keeper. Idempotent.
  void begin_drain();
  bool draining() const;
  int held() const;
  DrainReport finish(SteadyTime pool_deadline);

  // What the flows served are, for heartbeats.
  void set_served(std::vector<FlowKey> flows);

 private:
  void notifier_main();
  void keeper_main();
  void keeper_tick(bool renew_due, bool heartbeat_due);
  int claim_threshold() const noexcept;
  void wake(std::string_view slug);
  void wake_all();
  std::vector<std::shared_ptr<LoopState>> states() const;
  void run_task(const std::shared_ptr<LoopState>& state, const ClaimedTask& task);
  // A task whose job threw out of run_task(): fails it permanently with `error`.
  void fail_task(const std::shared_ptr<LoopState>& state, const ClaimedTask& task,
                 std::string error);
  // Queues the result of a task that ran (exactly one of the two), unless it was given up.
  void record_result(const std::shared_ptr<LoopState>& state, const ClaimedTask& task,
                     std::optional<Completion> completion, std::optional<Failure> failure);
  // Records results of retired loops and pending releases; false when the database is unreachable.
  bool flush_retired();
  bool flush_releases();
  void heartbeat(bool stopped);
  // Reports the crash journals of dead workers (before claiming, then by the keeper until the
  // database takes them); false while some remain.
  bool report_crashes();
  // The database could not be reached: lets revive_database try (rate-limited).
  void database_unreachable();
  int capacity_locked() const;
  // Sleeps up to `d` unless stopping.
  void nap(Millis d);

  const WorkerOptions options_;
  StorePool stores_;
  StorePool keeper_stores_;  // the keeper's own connection: renewals never wait for a loop's
  HandlerPool pool_;
  std::unique_ptr<TaskJournal> journal_;          // null: no journal_dir
  std::vector<TaskJournal::Leftover> leftovers_;  // guarded by mu_: dead workers' journals
  SteadyTime next_revive_{};                      // keeper only

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  std::vector<std::shared_ptr<LoopState>> states_;  // guarded by mu_
  std::vector<std::weak_ptr<LoopState>> starving_;  // guarded by mu_
  std::vector<Release> releases_;                   // guarded by mu_: to give back
  std::vector<FlowKey> served_;                     // guarded by mu_
  int in_use_ = 0;                                  // guarded by mu_: slots taken
  int stuck_ = 0;                                   // guarded by mu_: threads held by handlers
                                                    // that timed out
  bool draining_ = false;                           // guarded by mu_
  bool stopping_ = false;                           // guarded by mu_
  bool finished_ = false;                           // guarded by mu_
  DrainReport report_;                              // guarded by mu_

  std::thread notifier_;
  std::thread keeper_;
};

}  // namespace flowreg::detail
