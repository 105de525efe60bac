#pragma once
// flowreg::Registry: a general-purpose tool, not the flow registry (that is FlowRegistry, in
// flow_registry.hpp). A thread-safe key -> (owner, value) table with RAII owners and subscriptions,
// for an application that needs to find its own components by name.
//
//   flowreg::Registry<std::string, int> sessions(flowreg::Keys::unique);
//   auto owner = sessions.make_owner();                 // RAII: its entries die with it
//   if (auto ok = sessions.register_(owner, "user:alice", 1); !ok) { ... ok.error().message ... }
//   for (auto& [owner_id, value] : sessions.lookup("user:alice")) { ... }
//   auto sub = sessions.subscribe([](const auto& event) { ... });   // RAII as well
//
// Keys are unique (one entry per key) or duplicate (any number, in registration order).
// - Owners are tokens. Destroying an Owner removes all its entries, atomically, before the
//   destructor returns: no lookup that starts after that returns one of them, and a unique
//   register of the same key succeeds at once.
// - Listeners hear registrations, explicit unregistrations and owner cleanup
//   (UnregisterReason::owner_gone), with the delivery guarantee of subscription.hpp.
// - Registry-wide metadata: std::any values under std::string keys, so that the Registry keeps
//   exactly the three template parameters of its key/value table (meta_as<T>() reads one back
//   typed).

#include <algorithm>
#include <any>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <shared_mutex>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/subscription.hpp"
#include "flowreg/sync_point_hook.hpp"
#include "flowreg/thread_annotations.hpp"

namespace flowreg {

namespace detail {

// A key as it appears in error messages: quoted text, a number, or what operator<< prints.
template <class T>
std::string describe(const T& value) {
  if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    return "'" + std::string(std::string_view(value)) + "'";
  } else if constexpr (std::is_arithmetic_v<T>) {
    return std::to_string(value);
  } else if constexpr (requires(std::ostream & os, const T& v) { os << v; }) {
    std::ostringstream os;
    os << value;
    return "'" + os.str() + "'";
  } else {
    return "(a key that cannot be printed)";
  }
}

}  // namespace detail

enum class Keys { unique, duplicate };

// Identifies an Owner. Unique in the process for its lifetime, never reused; 0 is no owner.
enum class OwnerId : std::uint64_t {};

inline std::string to_string(OwnerId id) { return std::to_string(static_cast<std::uint64_t>(id)); }

enum class RegistryEventKind { registered, unregistered };

// Why an entry went away. `requested`: unregister() or unregister_match() (`explicit` is a C++
// keyword).
enum class UnregisterReason { none, requested, owner_gone };

template <class Key, class Value>
struct RegistryEvent {
  RegistryEventKind kind = RegistryEventKind::registered;
  Key key;
  OwnerId owner{};
  Value value;  // the value registered, or the value of the entry that went away
  UnregisterReason reason = UnregisterReason::none;  // none for `registered`
};

// Thread-safety: every member function may be called concurrently from any thread; readers
// (lookup, dispatch, count*, select, keys, values) share a lock, writers serialize on it. Every
// call is atomic with respect to the others: a reader sees the table before or after a write
// (including an owner's whole cleanup), never in between. Predicates and update functions run
// under the lock and must not call back into the registry; dispatch() and listeners run with no
// lock held and may. Listeners: see subscription.hpp (events in the order of the changes, one at a
// time, delivered before the call that made the change returns).
//
// REQUIRES: Key is copyable and hashable by Hash; Value is copyable.
//
// Neither copyable nor movable: owners and subscriptions point at it. Owners and subscriptions
// may outlive it (they then do nothing).
template <class Key, class Value, class Hash = std::hash<Key>>
class Registry {
  struct State;

 public:
  using Entry = std::pair<OwnerId, Value>;
  using Event = RegistryEvent<Key, Value>;

  // Holds entries in one registry; destroying it (or reset()) removes all of them at once and
  // tells listeners (reason owner_gone). Cost O(its entries). Move-only. Not thread-safe itself:
  // one thread destroys it while no other uses it (the usual rule for any object).
  class Owner {
   public:
    Owner() = default;  // owns nothing, belongs to no registry
    Owner(const Owner&) = delete;
    Owner& operator=(const Owner&) = delete;
    Owner(Owner&& other) noexcept
        : state_(std::move(other.state_)), id_(std::exchange(other.id_, OwnerId{})) {}
    Owner& operator=(Owner&& other) noexcept {
      if (this != &other) {
        reset();
        state_ = std::move(other.state_);
        id_ = std::exchange(other.id_, OwnerId{});
      }
      return *this;
    }
    ~Owner() { reset(); }

    // Removes this owner's entries now; the owner is then empty (id() == OwnerId{}).
    void reset() noexcept {
      if (id_ != OwnerId{}) {
        if (auto state = state_.lock()) remove_owner(*state, id_);
      }
      state_.reset();
      id_ = OwnerId{};
    }

    OwnerId id() const noexcept { return id_; }

   private:
    friend class Registry;
    Owner(std::weak_ptr<State> state, OwnerId id) : state_(std::move(state)), id_(id) {}

    std::weak_ptr<State> state_;
    OwnerId id_{};
  };

  explicit Registry(Keys keys) : state_(std::make_shared<State>(keys)) {}
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;
  Registry(Registry&&) = delete;
  Registry& operator=(Registry&&) = delete;
  ~Registry() = default;

  Keys keys_mode() const noexcept { return state_->keys; }

  Owner make_owner() {
    static std::atomic<std::uint64_t> next_id{1};
    return Owner(state_, OwnerId{next_id.fetch_add(1, std::memory_order_relaxed)});
  }

  // Adds (key, owner, value). Errors (Errc::invalid_argument): the owner does not belong to this
  // registry, or, with unique keys, the key is held (by any owner, this one included; the holder
  // keeps it and the message names the key and the holder).
  Result<void> register_(const Owner& owner, Key key, Value value) {
    if (!belongs(owner)) return foreign_owner();
    State& s = *state_;
    std::uint64_t last_event = 0;
    {
      detail::WriterLock lock(s.mu);
      auto& entries = s.by_key[key];
      if (s.keys == Keys::unique && !entries.empty()) {
        return make_error(Errc::invalid_argument, "key " + detail::describe(key) +
                                                      " is already registered by owner " +
                                                      to_string(entries.begin()->second.first));
      }
      const std::uint64_t seq = s.next_seq++;
      entries.emplace(seq, Entry{owner.id(), value});
      s.by_owner[owner.id()][key].push_back(seq);
      ++s.size;
      last_event =
          s.listeners->enqueue(Event{RegistryEventKind::registered, std::move(key), owner.id(),
                                     std::move(value), UnregisterReason::none});
    }
    // After the entry is in the table and the lock is released, before listeners hear of it.
    FLOWREG_SYNC_POINT("registry.register.notify");
    s.listeners->deliver_through(last_event);
    return {};
  }

  // Removes every entry of `owner` under `key`; returns how many. Entries of other owners are
  // never touched (an owner of another registry removes nothing).
  std::size_t unregister(const Owner& owner, const Key& key) {
    return unregister_if(owner, key, [](const Value&) { return true; });
  }

  // Same, for the entries whose value satisfies pred(const Value&) (run under the lock).
  template <class Pred>
  std::size_t unregister_match(const Owner& owner, const Key& key, Pred pred) {
    return unregister_if(owner, key, pred);
  }

  // Every (owner, value) under key, in registration order (one at most with unique keys).
  std::vector<Entry> lookup(const Key& key) const {
    const State& s = *state_;
    detail::ReaderLock lock(s.mu);
    std::vector<Entry> out;
    auto it = s.by_key.find(key);
    if (it == s.by_key.end()) return out;
    out.reserve(it->second.size());
    for (const auto& [seq, entry] : it->second) out.push_back(entry);
    return out;
  }

  // Calls fn(std::span<const Entry>) in the calling thread, with no lock held, over a snapshot of
  // the key's entries (as lookup returns them); not called when there are none. Returns the
  // number of entries.
  template <class Fn>
  std::size_t dispatch(const Key& key, Fn&& fn) const {
    const std::vector<Entry> entries = lookup(key);
    if (entries.empty()) return 0;
    std::forward<Fn>(fn)(std::span<const Entry>(entries));
    return entries.size();
  }

  // Keys under which owner has entries, once per entry.
  std::vector<Key> keys(const Owner& owner) const {
    std::vector<Key> out;
    if (!belongs(owner)) return out;
    const State& s = *state_;
    detail::ReaderLock lock(s.mu);
    auto it = s.by_owner.find(owner.id());
    if (it == s.by_owner.end()) return out;
    for (const auto& [key, seqs] : it->second) out.insert(out.end(), seqs.size(), key);
    return out;
  }

  // Values owner registered under key, in registration order.
  std::vector<Value> values(const Key& key, const Owner& owner) const {
    std::vector<Value> out;
    if (!belongs(owner)) return out;
    const State& s = *state_;
    detail::ReaderLock lock(s.mu);
    auto oit = s.by_owner.find(owner.id());
    if (oit == s.by_owner.end()) return out;
    auto kit = oit->second.find(key);
    if (kit == oit->second.end()) return out;
    const auto& entries = s.by_key.at(key);
    for (std::uint64_t seq : kit->second) out.push_back(entries.at(seq).second);
    return out;
  }

  // Unique keys only: runs fn(Value&) on owner's value under key, under the lock; returns the new
  // value. Errors: Errc::invalid_argument (duplicate-key registry, foreign owner),
  // Errc::not_found (owner holds no entry under key).
  template <class Fn>
  Result<Value> update_value(const Owner& owner, const Key& key, Fn&& fn) {
    State& s = *state_;
    if (s.keys != Keys::unique) {
      return make_error(
          Errc::invalid_argument,
          "update_value needs a registry with unique keys (key " + detail::describe(key) + ")");
    }
    if (!belongs(owner)) return foreign_owner();
    detail::WriterLock lock(s.mu);
    auto it = s.by_key.find(key);
    if (it == s.by_key.end() || it->second.begin()->second.first != owner.id()) {
      return make_error(
          Errc::not_found,
          "key " + detail::describe(key) + " is not registered by owner " + to_string(owner.id()));
    }
    Value& value = it->second.begin()->second.second;
    std::forward<Fn>(fn)(value);
    return value;
  }

  // Number of entries, all keys together.
  std::size_t count() const {
    const State& s = *state_;
    detail::ReaderLock lock(s.mu);
    return s.size;
  }

  std::size_t count_key(const Key& key) const {
    const State& s = *state_;
    detail::ReaderLock lock(s.mu);
    auto it = s.by_key.find(key);
    return it == s.by_key.end() ? 0 : it->second.size();
  }

  // Entries under key whose value satisfies pred(const Value&) (run under the lock).
  template <class Pred>
  std::size_t count_match(const Key& key, Pred pred) const {
    const State& s = *state_;
    detail::ReaderLock lock(s.mu);
    auto it = s.by_key.find(key);
    if (it == s.by_key.end()) return 0;
    std::size_t n = 0;
    for (const auto& [seq, entry] : it->second) {
      if (pred(entry.second)) ++n;
    }
    return n;
  }

  // Every entry for which pred(const Key&, OwnerId, const Value&) holds (run under the lock), as
  // (key, owner, value); keys in no particular order, a key's entries in registration order.
  template <class Pred>
  std::vector<std::tuple<Key, OwnerId, Value>> select(Pred pred) const {
    const State& s = *state_;
    detail::ReaderLock lock(s.mu);
    std::vector<std::tuple<Key, OwnerId, Value>> out;
    for (const auto& [key, entries] : s.by_key) {
      for (const auto& [seq, entry] : entries) {
        if (pred(key, entry.first, entry.second)) out.emplace_back(key, entry.first, entry.second);
      }
    }
    return out;
  }

  // Registry-wide metadata, independent of entries and owners.
  std::optional<std::any> meta(std::string_view key) const {
    const State& s = *state_;
    detail::MutexLock lock(s.meta_mu);
    auto it = s.meta.find(key);
    if (it == s.meta.end()) return std::nullopt;
    return it->second;
  }

  // The meta value as a T; nullopt when missing or of another type.
  template <class T>
  std::optional<T> meta_as(std::string_view key) const {
    auto value = meta(key);
    if (!value) return std::nullopt;
    if (const T* typed = std::any_cast<T>(&*value)) return *typed;
    return std::nullopt;
  }

  void put_meta(std::string key, std::any value) {
    State& s = *state_;
    detail::MutexLock lock(s.meta_mu);
    s.meta.insert_or_assign(std::move(key), std::move(value));
  }

  // Returns whether the key was there.
  bool delete_meta(std::string_view key) {
    State& s = *state_;
    detail::MutexLock lock(s.meta_mu);
    auto it = s.meta.find(key);
    if (it == s.meta.end()) return false;
    s.meta.erase(it);
    return true;
  }

  // fn(const Event&) hears every registration and unregistration made after this call, until the
  // Subscription dies. See the class comment for ordering.
  Subscription subscribe(std::function<void(const Event&)> fn) {
    return state_->listeners->subscribe(std::move(fn));
  }

 private:
  // Shared with the Owner tokens (weakly), so an owner that outlives the registry is harmless.
  struct State {
    explicit State(Keys k) : keys(k), listeners(std::make_shared<detail::Listeners<Event>>()) {}

    const Keys keys;
    mutable detail::AnnotatedSharedMutex mu;
    // key -> registration sequence number -> (owner, value): lookups in registration order.
    std::unordered_map<Key, std::map<std::uint64_t, Entry>, Hash> by_key FLOWREG_GUARDED_BY(mu);
    // owner -> key -> its sequence numbers: removing an owner costs O(its entries).
    std::unordered_map<OwnerId, std::unordered_map<Key, std::vector<std::uint64_t>, Hash>> by_owner
        FLOWREG_GUARDED_BY(mu);
    std::uint64_t next_seq FLOWREG_GUARDED_BY(mu) = 1;
    std::size_t size FLOWREG_GUARDED_BY(mu) = 0;

    mutable detail::AnnotatedMutex meta_mu;
    std::map<std::string, std::any, std::less<>> meta FLOWREG_GUARDED_BY(meta_mu);

    const std::shared_ptr<detail::Listeners<Event>> listeners;
  };

  bool belongs(const Owner& owner) const noexcept {
    return owner.id_ != OwnerId{} && !owner.state_.owner_before(state_) &&
           !state_.owner_before(owner.state_);
  }

  static tl::unexpected<Error> foreign_owner() {
    return make_error(Errc::invalid_argument, "the owner does not belong to this registry");
  }

  template <class Pred>
  std::size_t unregister_if(const Owner& owner, const Key& key, Pred&& pred) {
    if (!belongs(owner)) return 0;
    State& s = *state_;
    std::size_t removed = 0;
    std::uint64_t last_event = 0;
    {
      detail::WriterLock lock(s.mu);
      auto oit = s.by_owner.find(owner.id());
      if (oit == s.by_owner.end()) return 0;
      auto kit = oit->second.find(key);
      if (kit == oit->second.end()) return 0;
      auto bit = s.by_key.find(key);
      std::vector<std::uint64_t>& seqs = kit->second;
      std::vector<std::uint64_t> kept;
      for (std::uint64_t seq : seqs) {
        auto eit = bit->second.find(seq);
        if (!pred(std::as_const(eit->second.second))) {
          kept.push_back(seq);
          continue;
        }
        last_event =
            std::max(last_event, s.listeners->enqueue(Event{
                                     RegistryEventKind::unregistered, key, owner.id(),
                                     std::move(eit->second.second), UnregisterReason::requested}));
        bit->second.erase(eit);
        ++removed;
      }
      s.size -= removed;
      if (bit->second.empty()) s.by_key.erase(bit);
      if (kept.empty()) {
        oit->second.erase(kit);
        if (oit->second.empty()) s.by_owner.erase(oit);
      } else {
        seqs = std::move(kept);
      }
    }
    // After the entries left the table and the lock is released, before listeners hear of it.
    FLOWREG_SYNC_POINT("registry.unregister.notify");
    s.listeners->deliver_through(last_event);
    return removed;
  }

  static void remove_owner(State& s, OwnerId id) {
    // The owner is going away but its entries are still in the table.
    FLOWREG_SYNC_POINT("registry.owner_gone.remove");
    std::uint64_t last_event = 0;
    {
      detail::WriterLock lock(s.mu);
      auto node = s.by_owner.extract(id);
      if (node.empty()) return;
      for (auto& [key, seqs] : node.mapped()) {
        auto bit = s.by_key.find(key);
        for (std::uint64_t seq : seqs) {
          auto eit = bit->second.find(seq);
          last_event =
              std::max(last_event, s.listeners->enqueue(Event{RegistryEventKind::unregistered, key,
                                                              id, std::move(eit->second.second),
                                                              UnregisterReason::owner_gone}));
          bit->second.erase(eit);
          --s.size;
        }
        if (bit->second.empty()) s.by_key.erase(bit);
      }
    }
    // The entries are gone and the lock is released; listeners have not heard of it yet.
    FLOWREG_SYNC_POINT("registry.owner_gone.notify");
    s.listeners->deliver_through(last_event);
  }

  std::shared_ptr<State> state_;
};

}  // namespace flowreg
