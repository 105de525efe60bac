#pragma once
// flowreg::Subscription: the RAII handle of a listener, and the one delivery guarantee every
// flowreg component with subscribe() gives (FlowRegistry, Registry, HandleRegistry):
//
// - Order: listeners hear every change made after they subscribed, in the order the changes were
//   made, one event at a time: two listeners of the same component are never called concurrently.
// - Visibility: a change is visible to readers of the component before its listeners hear it.
// - Completion: the events of a change have been delivered when the call that made the change
//   returns (when that call is made from inside a listener: right after that listener returns).
// - No lock held: listeners run with no lock of the component held, on the thread of one of the
//   callers that made changes; they may read the component and change it (a change made from a
//   listener is delivered after the current event, to every listener).
// - Unsubscribing: after Subscription::reset() (or its destructor) returns, the listener is not
//   running and will not be called again; called from inside a listener of the same component, it
//   only guarantees that the listener is not called again.
// - A listener that throws terminates the program.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <utility>

#include "flowreg/sync_point_hook.hpp"
#include "flowreg/thread_annotations.hpp"

namespace flowreg {

namespace detail {

class ListenersBase {
 public:
  virtual ~ListenersBase() = default;
  virtual void unsubscribe(std::uint64_t id) noexcept = 0;
};

template <class Event>
class Listeners;

}  // namespace detail

// Keeps a listener subscribed; destroying it (or reset()) unsubscribes it (see the top of this file
// for what reset() guarantees). Move-only. May outlive its component (it then does nothing).
class Subscription {
 public:
  Subscription() = default;
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  Subscription(Subscription&& other) noexcept
      : source_(std::move(other.source_)), id_(std::exchange(other.id_, 0)) {}
  Subscription& operator=(Subscription&& other) noexcept {
    if (this != &other) {
      reset();
      source_ = std::move(other.source_);
      id_ = std::exchange(other.id_, 0);
    }
    return *this;
  }
  ~Subscription() { reset(); }

  void reset() noexcept {
    if (id_ != 0) {
      if (auto source = source_.lock()) source->unsubscribe(id_);
    }
    source_.reset();
    id_ = 0;
  }
  bool active() const noexcept { return id_ != 0; }

 private:
  template <class Event>
  friend class detail::Listeners;
  Subscription(std::weak_ptr<detail::ListenersBase> source, std::uint64_t id)
      : source_(std::move(source)), id_(id) {}

  std::weak_ptr<detail::ListenersBase> source_;
  std::uint64_t id_ = 0;
};

namespace detail {

// The listeners of one component, and the queue that hands them events in order: how the
// guarantee at the top of this file is kept.
//
// A component appends events with enqueue() while it holds the lock that orders its changes (after
// the change is visible to its readers), so sequence numbers follow the order of the changes; after
// unlocking it calls deliver_through(seq). Exactly one thread at a time (the drainer) calls
// listeners, with no lock held, event by event in sequence order; a caller whose events are being
// drained by another thread waits for them.
//
// Shared: Subscription keeps a weak_ptr to it.
template <class Event>
class Listeners final : public ListenersBase,
                        public std::enable_shared_from_this<Listeners<Event>> {
 public:
  using Fn = std::function<void(const Event&)>;

  // The listener hears events enqueued from now on.
  Subscription subscribe(Fn fn) {
    MutexLock lock(mu_);
    const std::uint64_t id = next_id_++;
    fns_.emplace(id, Entry{std::make_shared<const Fn>(std::move(fn)), next_seq_});
    return Subscription(this->weak_from_this(), id);
  }

  // Returns the event's sequence number, or 0 when nobody listens (the event is dropped).
  // REQUIRES: the caller holds the lock that orders the changes being reported.
  std::uint64_t enqueue(Event event) {
    MutexLock lock(mu_);
    if (fns_.empty()) return 0;
    const std::uint64_t seq = next_seq_++;
    pending_.emplace_back(seq, std::move(event));
    return seq;
  }

  // Returns once every event up to `seq` has been delivered. REQUIRES: no lock held.
  void deliver_through(std::uint64_t seq) {
    if (seq == 0) return;
    MutexLock lock(mu_);
    const auto self = std::this_thread::get_id();
    if (delivering_ && drainer_ == self) return;  // from a listener: the outer loop delivers it
    bool announced = false;
    while (delivered_ < seq) {
      if (delivering_) {
        if (!announced && FLOWREG_SYNC_POINTS_ARMED()) {
          announced = true;
          lock.unlock();
          // A thread whose events another thread is delivering, before it waits for them.
          FLOWREG_SYNC_POINT("listeners.await_drainer");
          lock.lock();
          continue;
        }
        cv_.wait(lock);
        continue;
      }
      delivering_ = true;
      drainer_ = self;
      while (!pending_.empty()) {
        std::pair<std::uint64_t, Event> item = std::move(pending_.front());
        pending_.pop_front();
        std::uint64_t last = 0;
        for (auto it = fns_.upper_bound(last); it != fns_.end(); it = fns_.upper_bound(last)) {
          last = it->first;
          if (it->second.from_seq > item.first) continue;  // subscribed after this event
          std::shared_ptr<const Fn> fn = it->second.fn;
          calling_ = last;
          lock.unlock();
          call(*fn, item.second);
          lock.lock();
          calling_ = 0;
          cv_.notify_all();
        }
        delivered_ = item.first;
        cv_.notify_all();
      }
      delivering_ = false;
      drainer_ = std::thread::id();
      cv_.notify_all();
    }
  }

  void unsubscribe(std::uint64_t id) noexcept override {
    MutexLock lock(mu_);
    fns_.erase(id);
    if (delivering_ && drainer_ == std::this_thread::get_id()) return;  // from a listener
    bool announced = false;
    while (calling_ == id) {
      if (!announced && FLOWREG_SYNC_POINTS_ARMED()) {
        announced = true;
        lock.unlock();
        // Unsubscribing while another thread runs this listener, before waiting for it.
        FLOWREG_SYNC_POINT("listeners.unsubscribe_wait");
        lock.lock();
        continue;
      }
      cv_.wait(lock);
    }
  }

 private:
  struct Entry {
    std::shared_ptr<const Fn> fn;
    std::uint64_t from_seq;  // first event sequence number it hears
  };

  static void call(const Fn& fn, const Event& event) noexcept { fn(event); }

  AnnotatedMutex mu_;
  std::condition_variable_any cv_;
  std::map<std::uint64_t, Entry> fns_ FLOWREG_GUARDED_BY(mu_);
  std::deque<std::pair<std::uint64_t, Event>> pending_ FLOWREG_GUARDED_BY(mu_);
  std::uint64_t next_id_ FLOWREG_GUARDED_BY(mu_) = 1;
  std::uint64_t next_seq_ FLOWREG_GUARDED_BY(mu_) = 1;
  std::uint64_t delivered_ FLOWREG_GUARDED_BY(mu_) = 0;
  bool delivering_ FLOWREG_GUARDED_BY(mu_) = false;
  std::thread::id drainer_ FLOWREG_GUARDED_BY(mu_);
  std::uint64_t calling_ FLOWREG_GUARDED_BY(mu_) = 0;  // listener id being called, or 0
};

}  // namespace detail

}  // namespace flowreg
