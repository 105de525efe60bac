#pragma once
// The lanes: the threads that make the round trips of every flow version a worker serves (`lanes`
// of them, WorkerOptions, however many flow versions it serves), and the rule for which flow goes
// next. They depend on the engine only through LaneHost (below): the engine owns them and
// implements it.
//
// A flow service (flow_service.hpp) adds its flow version here with its FlowState; the state
// wakes the lanes for it (FlowState's waker) whenever there is something to do: results to record,
// a claim wanted (a notification for its flow, capacity freed, a full claim), stopping. Woken
// flows wait in one FIFO queue: a lane takes the first, makes its round trip (WorkerStore::work:
// records that flow's results and claims tasks of that flow version only), and a flow woken again
// goes to the back. So a flow flooded with tasks, which wants a claim after every full one, takes
// its turn with the others: a quiet flow's claim waits for at most one round trip of each flow
// queued before it. Up to `lanes` round trips are in flight at once, of one flow or of several.
//
// Idle flows are not polled one by one: every poll_interval, one round trip claims across every
// flow version that claimed nothing since the previous poll (the fallback for notifications that
// were missed; flows busy claiming are claimed for by their own round trips). A flow with a
// delayed retry is claimed for alone when the retry falls due.
//
// Before its first round trip, a lane stores the flow version (WorkerStore::upsert_flow). A call
// the database cannot take (Errc::unavailable) is tried again for that flow with backoff
// (reconnect_min doubling up to reconnect_max); any other error ends the flow's service: its
// ExitSignal reports the error to its supervisor, and the flow is not scheduled any more.
//
// Thread-safety: every member function may be called concurrently. Lock order: the lanes' mutex is
// held while a FlowState's is taken (never the other way round: a FlowState calls its waker with
// no lock held), and while LaneHost::draining() is called, never while the host's other methods
// are.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "flowreg/flow.hpp"
#include "flowreg/thread_annotations.hpp"
#include "flowreg/tools/supervisor.hpp"
#include "worker/flow_state.hpp"
#include "worker/worker_options.hpp"
#include "worker/worker_store.hpp"

namespace flowreg::detail {

// What the lanes need of their owner (the engine): its task capacity, and the handler threads the
// tasks they claim run on. One virtual call per round trip, not per task (but for a poll, which
// dispatches task by task). Outlives the lanes.
class LaneHost {
 public:
  // No lane claims any more (the worker drains). Called with the lanes' mutex held: it must take
  // no lock.
  virtual bool draining() const noexcept = 0;
  // Up to `wanted` task slots for a claim by `state`'s flow (null: a claim across flows); see
  // Engine::acquire_slots. Slots not filled go back through release_slots.
  virtual int acquire_slots(int wanted, const std::shared_ptr<FlowState>& state) = 0;
  virtual void release_slots(int n) = 0;
  // Whether `state`'s flow may claim now (a poll across flows leaves out those that may not).
  virtual bool may_claim(const FlowState& state) const = 0;
  // Runs the tasks of one claim by `state`'s flow. REQUIRES: a slot acquired for each.
  virtual void dispatch(const std::shared_ptr<FlowState>& state,
                        std::vector<ClaimedTask> tasks) = 0;

 protected:
  LaneHost() = default;
  ~LaneHost() = default;  // not deleted through this interface
  LaneHost(const LaneHost&) = delete;
  LaneHost& operator=(const LaneHost&) = delete;
};

class Lanes {
 public:
  // A flow version in the lanes: its definition, its state and the signal its failure goes to.
  // Immutable; what the lanes track of it is theirs (guarded by their mutex).
  struct Flow {
    FlowDef def;
    std::shared_ptr<FlowState> state;
    ExitSignal exit;
  };

  // Starts the lanes. `options`, `store` (the round trips) and `host` outlive them.
  Lanes(const WorkerOptions& options, WorkerStore& store, LaneHost& host);
  ~Lanes();  // stop()
  Lanes(const Lanes&) = delete;
  Lanes& operator=(const Lanes&) = delete;

  // Schedules a flow version: it is stored, then its round trips are made, until remove(). Sets
  // the state's waker.
  std::shared_ptr<const Flow> add(FlowDef def, std::shared_ptr<FlowState> state, ExitSignal exit);
  // Takes a flow out, waiting for its round trips in flight. REQUIRES: not on a lane's thread.
  void remove(const std::shared_ptr<const Flow>& flow);
  // Ends the lanes (their round trips in flight finish first). Idempotent.
  void stop();

  // Flow versions scheduled (tests).
  std::size_t size() const;

 private:
  // What the lanes know of one flow version.
  struct Entry {
    std::shared_ptr<const Flow> flow;
    bool queued = false;                       // in ready_
    bool timed = false;                        // in timed_
    bool defined = false;                      // its flow version is stored
    bool defining = false;                     // a lane is storing it
    bool failed = false;                       // its ExitSignal was called: not scheduled any more
    bool outage = false;                       // its last call found the database unreachable
    int in_flight = 0;                         // lanes working for it
    SteadyTime wake_at = SteadyTime::max();    // when a timer queues it (timed)
    SteadyTime retry_at{};                     // no call before (backoff)
    SteadyTime next_poll = SteadyTime::max();  // a claim is due then (a delayed retry)
    SteadyTime last_claim{};                   // when it last claimed tasks
    Millis backoff{0};
  };

  // What a lane does next.
  struct Work {
    enum class Kind { none, define, trip, poll } kind = Kind::none;
    std::vector<std::shared_ptr<const Flow>> flows;  // one, but for poll
    FlowState::Round round;                          // trip
  };
  // The outcome of a piece of work, applied under the lock.
  struct Done {
    // The call's error: Errc::unavailable is ridden out with backoff, any other fails the flow.
    std::optional<Error> error;
    int claimed = 0;
    bool full = false;                    // trip: claimed as many as it could hold
    std::optional<Millis> next_due_in;    // trip: a delayed retry of its flow
    bool claimed_for = false;             // trip: the round trip claimed (want_claim)
    std::vector<const Flow*> claimed_by;  // poll: flows that got tasks
    std::vector<std::pair<const Flow*, Error>> probe_failed;  // poll
  };

  void run();
  Work next_work(SteadyTime now) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  void fire_timers(SteadyTime now) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  SteadyTime earliest() const FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  void set_timer(Entry& e, SteadyTime at) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  void enqueue(Entry& e) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  // The flow's waker.
  void wake(const Flow* flow);

  Done define(const Flow& flow);
  Done trip(const Flow& flow, FlowState::Round& round);
  Done poll(const std::vector<std::shared_ptr<const Flow>>& flows);
  // Applies `done`; the exit signals to call (with no lock held) and the states to wake.
  void settle(const Work& work, Done& done, SteadyTime now,
              std::vector<std::pair<ExitSignal, Error>>& exits,
              std::vector<std::shared_ptr<FlowState>>& claim_again)
      FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));

  const WorkerOptions& options_;
  WorkerStore& store_;
  LaneHost& host_;
  mutable AnnotatedMutex mu_;
  std::condition_variable_any cv_;  // a flow queued, a timer changed, work done, stopping
  std::unordered_map<const Flow*, Entry> entries_ FLOWREG_GUARDED_BY(mu_);
  std::deque<const Flow*> ready_ FLOWREG_GUARDED_BY(mu_);   // FIFO: the fairness rule
  std::vector<const Flow*> timed_ FLOWREG_GUARDED_BY(mu_);  // entries with a timer
  SteadyTime next_poll_all_ FLOWREG_GUARDED_BY(mu_);        // the poll of idle flows
  bool stopping_ FLOWREG_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // written by the constructor and stop() only
};

}  // namespace flowreg::detail
