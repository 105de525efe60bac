#pragma once
// The threads that make the round trips of every flow loop of a worker: loop_lanes of them
// (WorkerOptions), however many flow versions the worker serves, and the rule for which loop goes
// next.
//
// A flow loop (flow_loop.hpp) adds its LoopState here; the state wakes its loop (LoopState's
// waker) whenever there is something to do: results to record, a claim wanted (a notification for
// its flow, capacity freed, a full claim), stopping. Woken loops wait in one FIFO queue: a lane
// takes the first, makes its round trip (WorkerStore::work: records that loop's results and claims
// tasks of that flow version only), and a loop woken again goes to the back. So a flow flooded
// with tasks, which wants a claim after every full one, takes its turn with the others: a quiet
// flow's claim waits for at most one round trip of each flow queued before it. Up to loop_lanes
// round trips are in flight at once, of one flow or of several.
//
// Idle flows are not polled one by one: every poll_interval, one round trip claims across every
// flow version that claimed nothing since the previous poll (the fallback for notifications that
// were missed; flows busy claiming are claimed for by their own round trips). A flow with a
// delayed retry is claimed for alone when the retry falls due.
//
// Before its first round trip, a lane stores the loop's flow version (WorkerStore::upsert_flow).
// A call the database cannot take (Errc::unavailable) is tried again for that loop with backoff
// (reconnect_min doubling up to reconnect_max); any other error ends the loop: its ExitSignal
// reports the error to its supervisor, and it is not scheduled any more.
//
// Thread-safety: every member function may be called concurrently. Lock order: the lanes' mutex is
// held while a LoopState's is taken (never the other way round: a LoopState calls its waker with
// no lock held), and never while the engine's is taken.

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
#include "worker/loop_state.hpp"

namespace flowreg::detail {

class Engine;

class LoopLanes {
 public:
  // A flow loop in the lanes: its definition, its state and the signal its failure goes to.
  // Immutable; what the lanes track of it is theirs (guarded by their mutex).
  struct Loop {
    FlowDef flow;
    std::shared_ptr<LoopState> state;
    ExitSignal exit;
  };

  // Starts the lanes. `engine` outlives them (it owns them).
  explicit LoopLanes(Engine& engine);
  ~LoopLanes();  // stop()
  LoopLanes(const LoopLanes&) = delete;
  LoopLanes& operator=(const LoopLanes&) = delete;

  // Schedules a loop: its flow version is stored, then its round trips are made, until remove().
  // Sets the state's waker.
  std::shared_ptr<const Loop> add(FlowDef flow, std::shared_ptr<LoopState> state, ExitSignal exit);
  // Takes a loop out, waiting for its round trips in flight. REQUIRES: not on a lane's thread.
  void remove(const std::shared_ptr<const Loop>& loop);
  // Ends the lanes (their round trips in flight finish first). Idempotent.
  void stop();

  // Loops scheduled (tests).
  std::size_t size() const;

 private:
  // What the lanes know of one loop.
  struct Entry {
    std::shared_ptr<const Loop> loop;
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
    std::vector<std::shared_ptr<const Loop>> loops;  // one, but for poll
    LoopState::Round round;                          // trip
  };
  // The outcome of a piece of work, applied under the lock.
  struct Done {
    // The call's error: Errc::unavailable is ridden out with backoff, any other fails the loop.
    std::optional<Error> error;
    int claimed = 0;
    bool full = false;                    // trip: claimed as many as it could hold
    std::optional<Millis> next_due_in;    // trip: a delayed retry of its flow
    bool claimed_for = false;             // trip: the round trip claimed (want_claim)
    std::vector<const Loop*> claimed_by;  // poll: loops that got tasks
    std::vector<std::pair<const Loop*, Error>> probe_failed;  // poll
  };

  void run();
  Work next_work(SteadyTime now) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  void fire_timers(SteadyTime now) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  SteadyTime earliest() const FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  void set_timer(Entry& e, SteadyTime at) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  void enqueue(Entry& e) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));
  // The loop's waker.
  void wake(const Loop* loop);

  Done define(const Loop& loop);
  Done trip(const Loop& loop, LoopState::Round& round);
  Done poll(const std::vector<std::shared_ptr<const Loop>>& loops);
  // Applies `done`; the exit signals to call (with no lock held) and the states to wake.
  void settle(const Work& work, Done& done, SteadyTime now,
              std::vector<std::pair<ExitSignal, Error>>& exits,
              std::vector<std::shared_ptr<LoopState>>& claim_again)
      FLOWREG_THREAD_ANNOTATION(requires_capability(mu_));

  Engine& engine_;
  mutable AnnotatedMutex mu_;
  std::condition_variable_any cv_;  // a loop queued, a timer changed, work done, stopping
  std::unordered_map<const Loop*, Entry> entries_ FLOWREG_GUARDED_BY(mu_);
  std::deque<const Loop*> ready_ FLOWREG_GUARDED_BY(mu_);   // FIFO: the fairness rule
  std::vector<const Loop*> timed_ FLOWREG_GUARDED_BY(mu_);  // entries with a timer
  SteadyTime next_poll_all_ FLOWREG_GUARDED_BY(mu_);        // the poll of idle flows
  bool stopping_ FLOWREG_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // written by the constructor and stop() only
};

}  // namespace flowreg::detail
