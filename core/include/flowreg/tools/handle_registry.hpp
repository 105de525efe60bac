#pragma once
// flowreg::HandleRegistry: a general-purpose tool, not the flow registry (that is FlowRegistry, in
// flow_registry.hpp). get_or_start of handles: one shared handle per key (a connection, a cloned
// repository, a session), started on first use by exactly one caller while the others wait.
//
//   flowreg::HandleRegistry<std::string, Repo, RepoOptions> repos;
//   repos.start();
//   auto repo = repos.get_or_start(url, [&] { return Repo::clone(url, opts); }, opts);
//   if (!repo) { ... repo.error() ... }            // the clone failed, or the registry is stopped
//
// The first caller for a key runs the factory; callers that arrive while it runs wait for it and
// receive the same handle, or the same error. Later calls return the handle at once. A failed
// start leaves nothing behind: the next call tries again.
//
// Handles. The registry keeps a shared_ptr to each handle. Two optional members of Handle are
// used when present: `void stop()`, called (outside every lock) when the registry lets a handle go
// through stop(), stop_all() or its destructor; and `bool alive() const`, checked by get_or_start()
// and lookup(): a handle that is not alive is removed (event `died`) and the next get_or_start()
// starts a fresh one. A handle without alive() can report its death with report_dead(key, handle).
// alive() is called under the registry's lock: it must be cheap and must not call back.
//
// Options. The first caller's options are the ones in effect (they go to the factory). A later
// caller's options that differ (operator==) are ignored and reported (event `options_ignored`).
// REQUIRES: Options is copyable, default-constructible and equality-comparable; Key is copyable
// and hashable by Hash.
//
// Thread-safety: every member function may be called concurrently from any thread. The
// registry-wide lock is held only for map operations, never while a factory, stop() or a listener
// runs, so a slow start for one key never delays calls for other keys. REQUIRES: a factory does
// not call get_or_start() for its own key (it would wait for itself). Events reach listeners in the
// order the registry changed, one at a time, with no lock held (see subscription.hpp). A factory
// that throws is reported as Errc::internal to every waiter.
//
// Not copyable or movable (waiters and factories refer to it). The destructor calls stop_all();
// REQUIRES: no call is in progress when it runs.

#include <algorithm>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/sync_point_hook.hpp"
#include "flowreg/tools/registry.hpp"

namespace flowreg {

enum class HandleEventKind { started, start_failed, options_ignored, stopped, died };

template <class Key, class Handle, class Options>
struct HandleEvent {
  HandleEventKind kind = HandleEventKind::started;
  Key key;
  std::shared_ptr<Handle> handle;          // started, stopped, died
  std::optional<Error> error;              // start_failed
  std::optional<Options> options;          // started, options_ignored: the options in effect
  std::optional<Options> ignored_options;  // options_ignored: the later caller's options
};

template <class Key, class Handle, class Options, class Hash = std::hash<Key>>
class HandleRegistry {
 public:
  using HandlePtr = std::shared_ptr<Handle>;
  using Event = HandleEvent<Key, Handle, Options>;

  HandleRegistry() = default;
  HandleRegistry(const HandleRegistry&) = delete;
  HandleRegistry& operator=(const HandleRegistry&) = delete;
  HandleRegistry(HandleRegistry&&) = delete;
  HandleRegistry& operator=(HandleRegistry&&) = delete;
  ~HandleRegistry() { stop_all(); }

  // Starts accepting calls. Starting a running registry does nothing.
  Result<void> start() {
    detail::MutexLock lock(mu_);
    running_ = true;
    return {};
  }

  bool running() const {
    detail::MutexLock lock(mu_);
    return running_;
  }

  // Stops accepting calls (they return Errc::not_started), removes every handle and stops it
  // (events `stopped`). Starts in progress fail with Errc::not_started for their caller and
  // waiters; a handle their factory still returns is stopped. start() may be called again.
  void stop_all() {
    std::vector<HandlePtr> handles;
    std::uint64_t last_event = 0;
    {
      detail::MutexLock lock(mu_);
      running_ = false;
      for (auto& [key, slot] : slots_) {
        if (!slot.handle) continue;  // starting: its leader notices the slot is gone
        last_event = std::max(
            last_event, listeners_->enqueue(event(HandleEventKind::stopped, key, slot.handle)));
        handles.push_back(std::move(slot.handle));
      }
      slots_.clear();
    }
    for (const HandlePtr& handle : handles) stop_handle(*handle);
    listeners_->deliver_through(last_event);
  }

  // The handle for key, started by factory if there is none. factory is a callable returning
  // something convertible to Result<std::shared_ptr<Handle>>, invocable as factory(key, options)
  // or factory(); it runs in the calling thread, and only for the first caller (later callers'
  // factories are not called). Errors: Errc::not_started when the registry is not running or was
  // stopped (stop(key), stop_all()) while the handle was starting; the factory's error; or
  // Errc::internal when the factory threw or returned a null handle.
  template <class Factory>
  Result<HandlePtr> get_or_start(const Key& key, Factory&& factory, Options options = Options{}) {
    std::shared_ptr<Flight> flight;
    HandlePtr ready;
    bool leader = false;
    std::uint64_t last_event = 0;
    {
      detail::MutexLock lock(mu_);
      if (!running_) return not_running(key);
      auto it = slots_.find(key);
      if (it != slots_.end() && it->second.handle && !is_alive(*it->second.handle)) {
        last_event = listeners_->enqueue(event(HandleEventKind::died, key, it->second.handle));
        slots_.erase(it);
        it = slots_.end();
      }
      if (it == slots_.end()) {
        flight = std::make_shared<Flight>();
        slots_.emplace(key, Slot{flight, nullptr, options});
        leader = true;
      } else {
        Slot& slot = it->second;
        if (!(options == slot.options)) {
          Event ignored = event(HandleEventKind::options_ignored, key, slot.handle);
          ignored.options = slot.options;
          ignored.ignored_options = options;
          last_event = std::max(last_event, listeners_->enqueue(std::move(ignored)));
        }
        if (slot.handle) {
          ready = slot.handle;
        } else {
          flight = slot.flight;
        }
      }
    }
    listeners_->deliver_through(last_event);
    if (ready) return ready;
    if (!leader) {
      // Joined a start in progress (its result is this caller's), before blocking for it.
      FLOWREG_SYNC_POINT("handle_registry.wait");
      return flight->wait();
    }
    return lead(key, flight, factory, options);
  }

  // Removes key's handle and stops it (event `stopped`); fine whether or not key is there. A start
  // in progress for key is abandoned: its caller and waiters get Errc::not_started and the handle
  // its factory returns is stopped. Error: Errc::not_started when the registry is not running.
  Result<void> stop(const Key& key) {
    HandlePtr handle;
    std::uint64_t last_event = 0;
    {
      detail::MutexLock lock(mu_);
      if (!running_) return not_running(key);
      auto it = slots_.find(key);
      if (it == slots_.end()) return {};
      handle = std::move(it->second.handle);
      if (handle) last_event = listeners_->enqueue(event(HandleEventKind::stopped, key, handle));
      slots_.erase(it);
    }
    if (handle) stop_handle(*handle);
    listeners_->deliver_through(last_event);
    return {};
  }

  // The handle has died: removes it (event `died`) unless key now holds another handle (a report
  // that arrives after a restart changes nothing). Returns whether it was removed. Does not call
  // stop().
  bool report_dead(const Key& key, const HandlePtr& handle) {
    std::uint64_t last_event = 0;
    {
      detail::MutexLock lock(mu_);
      auto it = slots_.find(key);
      if (!handle || it == slots_.end() || it->second.handle != handle) return false;
      last_event = listeners_->enqueue(event(HandleEventKind::died, key, handle));
      slots_.erase(it);
    }
    listeners_->deliver_through(last_event);
    return true;
  }

  // The live handle for key, or nullptr (none, still starting, dead, or registry not running).
  HandlePtr lookup(const Key& key) {
    std::uint64_t last_event = 0;
    {
      detail::MutexLock lock(mu_);
      auto it = slots_.find(key);
      if (!running_ || it == slots_.end() || !it->second.handle) return nullptr;
      if (is_alive(*it->second.handle)) return it->second.handle;
      last_event = listeners_->enqueue(event(HandleEventKind::died, key, it->second.handle));
      slots_.erase(it);
    }
    listeners_->deliver_through(last_event);
    return nullptr;
  }

  // Number of started handles (not those still starting); 0 when not running. O(keys). Handles
  // whose death nobody noticed yet (see alive()) are counted.
  std::size_t count() const {
    detail::MutexLock lock(mu_);
    std::size_t n = 0;
    for (const auto& [key, slot] : slots_) {
      if (slot.handle) ++n;
    }
    return n;
  }

  // Keys of the started handles, in no particular order; empty when not running.
  std::vector<Key> list() const {
    detail::MutexLock lock(mu_);
    std::vector<Key> out;
    for (const auto& [key, slot] : slots_) {
      if (slot.handle) out.push_back(key);
    }
    return out;
  }

  // fn(const Event&) hears every event after this call until the Subscription dies.
  Subscription subscribe(std::function<void(const Event&)> fn) {
    return listeners_->subscribe(std::move(fn));
  }

 private:
  // One start in progress: the leader publishes its result once; every joiner reads it.
  struct Flight {
    detail::AnnotatedMutex mu;
    std::condition_variable_any cv;
    std::optional<Result<HandlePtr>> result FLOWREG_GUARDED_BY(mu);

    void publish(Result<HandlePtr> value) {
      {
        detail::MutexLock lock(mu);
        result = std::move(value);
      }
      cv.notify_all();
    }
    Result<HandlePtr> wait() {
      detail::MutexLock lock(mu);
      while (!result) cv.wait(lock);
      return *result;
    }
  };

  // A key's state: starting (flight set, handle null) or started (handle set, flight null).
  struct Slot {
    std::shared_ptr<Flight> flight;
    HandlePtr handle;
    Options options;  // the first caller's
  };

  template <class Factory>
  Result<HandlePtr> lead(const Key& key, const std::shared_ptr<Flight>& flight, Factory& factory,
                         const Options& options) {
    Result<HandlePtr> result = run_factory(factory, key, options);
    if (result && !*result) {
      result = make_error(Errc::internal,
                          "key " + detail::describe(key) + ": the factory returned no handle");
    }
    HandlePtr orphan;
    std::uint64_t last_event = 0;
    {
      detail::MutexLock lock(mu_);
      auto it = slots_.find(key);
      const bool ours = it != slots_.end() && it->second.flight == flight;
      if (ours && result) {
        it->second.flight.reset();
        it->second.handle = *result;
        Event started = event(HandleEventKind::started, key, *result);
        started.options = options;
        last_event = listeners_->enqueue(std::move(started));
      } else if (result) {  // stop(key) or stop_all() took the slot while the factory ran
        orphan = std::move(*result);
        last_event = listeners_->enqueue(event(HandleEventKind::stopped, key, orphan));
        result = make_error(Errc::not_started,
                            "key " + detail::describe(key) + ": stopped while starting");
      } else {
        Event failed = event(HandleEventKind::start_failed, key, nullptr);
        failed.error = result.error();
        last_event = listeners_->enqueue(std::move(failed));
        if (ours) slots_.erase(it);
      }
    }
    if (orphan) stop_handle(*orphan);
    flight->publish(result);
    listeners_->deliver_through(last_event);
    return result;
  }

  template <class Factory>
  static Result<HandlePtr> run_factory(Factory& factory, const Key& key, const Options& options) {
    try {
      if constexpr (std::is_invocable_v<Factory&, const Key&, const Options&>) {
        return Result<HandlePtr>(factory(key, options));
      } else {
        return Result<HandlePtr>(factory());
      }
    } catch (const std::exception& e) {
      return make_error(Errc::internal,
                        "key " + detail::describe(key) + ": the factory threw: " + e.what());
    } catch (...) {
      return make_error(Errc::internal,
                        "key " + detail::describe(key) + ": the factory threw a non-std exception");
    }
  }

  static bool is_alive(const Handle& handle) {
    if constexpr (requires(const Handle& h) {
                    { h.alive() } -> std::convertible_to<bool>;
                  }) {
      return static_cast<bool>(handle.alive());
    } else {
      return true;
    }
  }

  static void stop_handle(Handle& handle) {
    if constexpr (requires(Handle & h) { h.stop(); }) handle.stop();
  }

  static Event event(HandleEventKind kind, const Key& key, HandlePtr handle) {
    return Event{kind, key, std::move(handle), std::nullopt, std::nullopt, std::nullopt};
  }

  static tl::unexpected<Error> not_running(const Key& key) {
    return make_error(Errc::not_started,
                      "handle registry is not running (key " + detail::describe(key) + ")");
  }

  mutable detail::AnnotatedMutex mu_;
  bool running_ FLOWREG_GUARDED_BY(mu_) = false;
  std::unordered_map<Key, Slot, Hash> slots_ FLOWREG_GUARDED_BY(mu_);
  const std::shared_ptr<detail::Listeners<Event>> listeners_ =
      std::make_shared<detail::Listeners<Event>>();
};

}  // namespace flowreg
