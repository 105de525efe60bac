#pragma once
// Sync points: named places in production code where a test can force an interleaving (park a
// thread there until the test releases it, or run a callback there).
//
//   FLOWREG_SYNC_POINT("handle_registry.wait");   // in the code under test
//
//   auto& sp = flowreg::detail::SyncPoints::instance();   // in a test
//   sp.arm("handle_registry.wait");                 // threads that get there park...
//   REQUIRE(sp.wait_parked("handle_registry.wait", 3));   // ...until the test has seen all three
//   sp.release("handle_registry.wait");             // ...and lets them go
//
// The points are always compiled in (tests run optimized builds). When nothing is armed, a point
// costs one relaxed atomic load. Armed, reach() takes a process-wide mutex: never arm points in
// production.
//
// Thread-safety: every member function is safe to call from any thread. instance() is one object
// per process (per shared object that inlines it, in builds with hidden visibility: plugins get
// their own). Tests arm points and call reset() after themselves; a test that fails while threads
// are parked must reset() before joining them, or the join never returns.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "flowreg/thread_annotations.hpp"

namespace flowreg::detail {

class SyncPoints {
 public:
  static SyncPoints& instance() {
    static SyncPoints points;
    return points;
  }

  SyncPoints(const SyncPoints&) = delete;
  SyncPoints& operator=(const SyncPoints&) = delete;
  SyncPoints(SyncPoints&&) = delete;
  SyncPoints& operator=(SyncPoints&&) = delete;

  // Threads reaching `name` park there until release(name) or reset(). Arming a point that runs a
  // callback (on) turns it into a parking point.
  void arm(std::string name) {
    MutexLock lock(mu_);
    Point& point = points_[std::move(name)];
    point.callback.reset();
    if (!point.gate) point.gate = std::make_shared<Gate>();
    any_armed_.store(true, std::memory_order_relaxed);
  }

  // Threads reaching `name` run fn (in their own thread, with no lock held) instead of parking,
  // until release(name) or reset(). fn may be called by several threads at once. Threads parked at
  // `name` by an earlier arm() are released.
  void on(std::string name, std::function<void()> fn) {
    MutexLock lock(mu_);
    Point& point = points_[std::move(name)];
    if (point.gate) open(*point.gate);
    point.gate.reset();
    point.callback = std::make_shared<const std::function<void()>>(std::move(fn));
    any_armed_.store(true, std::memory_order_relaxed);
  }

  // True as soon as at least `count` threads are parked at `name`; false after `timeout`. The
  // timeout is a deadlock guard for tests, not a measurement.
  bool wait_parked(std::string_view name, std::size_t count,
                   std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    MutexLock lock(mu_);
    for (;;) {
      auto it = points_.find(name);
      if (it != points_.end() && it->second.gate && it->second.gate->parked >= count) return true;
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
        it = points_.find(name);
        return it != points_.end() && it->second.gate && it->second.gate->parked >= count;
      }
    }
  }

  // Unparks every thread at `name` and disarms it: threads that get there later pass through.
  void release(std::string_view name) {
    MutexLock lock(mu_);
    auto it = points_.find(name);
    if (it == points_.end()) return;
    if (it->second.gate) open(*it->second.gate);
    points_.erase(it);
    any_armed_.store(!points_.empty(), std::memory_order_relaxed);
  }

  // Disarms every point and releases every parked thread.
  void reset() {
    MutexLock lock(mu_);
    for (auto& [name, point] : points_) {
      if (point.gate) open(*point.gate);
    }
    points_.clear();
    any_armed_.store(false, std::memory_order_relaxed);
  }

  // Called by FLOWREG_SYNC_POINT: parks, runs the callback, or returns at once.
  void reach(std::string_view name) {
    MutexLock lock(mu_);
    auto it = points_.find(name);
    if (it == points_.end()) return;
    if (it->second.callback) {
      auto callback = it->second.callback;  // release() may drop the point while fn runs
      lock.unlock();
      (*callback)();
      return;
    }
    auto gate = it->second.gate;  // outlives the point: release() erases it while we wait
    ++gate->parked;
    cv_.notify_all();
    while (!gate->open) cv_.wait(lock);
    --gate->parked;
  }

  // Relaxed: a stale false only skips a point that a test armed concurrently with the thread
  // passing it; tests arm before they start the threads they mean to stop (thread creation
  // synchronizes).
  bool any_armed() const noexcept { return any_armed_.load(std::memory_order_relaxed); }

 private:
  SyncPoints() = default;
  ~SyncPoints() = default;

  // Guarded by mu_ (the SyncPoints' mutex, which clang's annotations cannot name from here): read
  // and written only under it.
  struct Gate {
    std::size_t parked = 0;
    bool open = false;
  };
  struct Point {
    std::shared_ptr<Gate> gate;                             // parking point
    std::shared_ptr<const std::function<void()>> callback;  // or callback point
  };

  void open(Gate& gate) FLOWREG_REQUIRES(mu_) {
    gate.open = true;
    cv_.notify_all();
  }

  AnnotatedMutex mu_;
  std::condition_variable_any cv_;  // parked threads and wait_parked() callers
  std::map<std::string, Point, std::less<>> points_ FLOWREG_GUARDED_BY(mu_);
  std::atomic<bool> any_armed_{false};
};

}  // namespace flowreg::detail

#define FLOWREG_SYNC_POINT(name)                               \
  do {                                                         \
    if (::flowreg::detail::SyncPoints::instance().any_armed()) \
      ::flowreg::detail::SyncPoints::instance().reach(name);   \
  } while (0)
