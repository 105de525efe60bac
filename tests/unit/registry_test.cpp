#include "flowreg/tools/registry.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <any>
#include <array>
#include <atomic>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "flowreg/sync_point.hpp"
#include "support/threads.hpp"

using namespace flowreg;
using flowreg::detail::SyncPoints;

using flowreg::test::Threads;

namespace {

using Reg = Registry<std::string, int>;
using Event = Reg::Event;

// Records every event a registry reports.
template <class R>
class Recorder {
 public:
  explicit Recorder(R& registry)
      : sub_(registry.subscribe([this](const typename R::Event& e) {
          std::lock_guard lock(mu_);
          events_.push_back(e);
        })) {}

  std::vector<typename R::Event> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  Subscription& subscription() { return sub_; }

 private:
  mutable std::mutex mu_;
  std::vector<typename R::Event> events_;
  Subscription sub_;  // last: unsubscribed before the members above go away
};

bool is(const Event& e, RegistryEventKind kind, const std::string& key, OwnerId owner,
        UnregisterReason reason = UnregisterReason::none) {
  return e.kind == kind && e.key == key && e.owner == owner && e.reason == reason;
}

// One registration of a test's setup.
struct Registration {
  const Reg::Owner& owner;
  std::string key;
  int value;
};

// Registers each entry in order; every registration must succeed.
void register_all(Reg& reg, std::initializer_list<Registration> entries) {
  for (const auto& e : entries) {
    CAPTURE(e.key);
    CAPTURE(e.value);
    REQUIRE(reg.register_(e.owner, e.key, e.value));
  }
}

std::vector<OwnerId> owners_of(const std::vector<Reg::Entry>& entries) {
  std::vector<OwnerId> out;
  for (const auto& entry : entries) out.push_back(entry.first);
  return out;
}

}  // namespace

TEST_SUITE("registry") {
  TEST_CASE("a unique registry refuses a second registration and names the key and its holder") {
    Reg reg(Keys::unique);
    auto alice = reg.make_owner();
    auto bob = reg.make_owner();
    REQUIRE(reg.register_(alice, "user:alice", 1));
    auto again = reg.register_(bob, "user:alice", 2);
    REQUIRE_FALSE(again);
    CHECK(again.error().code == Errc::invalid_argument);
    CHECK(again.error().message.find("'user:alice'") != std::string::npos);
    CHECK(again.error().message.find(to_string(alice.id())) != std::string::npos);
    CHECK(reg.lookup("user:alice") == std::vector<Reg::Entry>{{alice.id(), 1}});
    CHECK_FALSE(reg.register_(alice, "user:alice", 3));
  }

  TEST_CASE("a duplicate registry keeps every registration of a key in registration order") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    register_all(reg, {{a, "events", 1}, {b, "events", 2}, {a, "events", 3}});
    CHECK(reg.lookup("events") == std::vector<Reg::Entry>{{a.id(), 1}, {b.id(), 2}, {a.id(), 3}});
    CHECK(reg.count() == 3);
  }

  TEST_CASE("lookup of a key nobody registered returns nothing") {
    Reg reg(Keys::unique);
    CHECK(reg.lookup("missing").empty());
    CHECK(reg.count_key("missing") == 0);
  }

  TEST_CASE("owner ids are distinct and an empty owner has none") {
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    CHECK(a.id() != b.id());
    CHECK(a.id() != OwnerId{});
    CHECK(Reg::Owner().id() == OwnerId{});
  }

  TEST_CASE("unregister removes only the calling owner's entries") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    register_all(reg, {{a, "k", 1}, {a, "k", 2}, {b, "k", 3}});
    CHECK(reg.unregister(b, "other") == 0);
    CHECK(reg.unregister(a, "k") == 2);
    CHECK(reg.lookup("k") == std::vector<Reg::Entry>{{b.id(), 3}});
    CHECK(reg.unregister(a, "k") == 0);
  }

  TEST_CASE("an owner of another registry can neither register nor unregister") {
    Reg reg(Keys::unique);
    Reg other(Keys::unique);
    auto mine = reg.make_owner();
    auto stranger = other.make_owner();
    REQUIRE(reg.register_(mine, "k", 1));
    auto refused = reg.register_(stranger, "x", 1);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == Errc::invalid_argument);
    CHECK(reg.unregister(stranger, "k") == 0);
    CHECK(reg.unregister(Reg::Owner(), "k") == 0);
    CHECK(reg.count() == 1);
  }

  TEST_CASE("unregister_match removes only the owner's entries whose value matches") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    register_all(reg, {{a, "k", 1}, {a, "k", 2}, {a, "k", 4}, {b, "k", 2}});
    CHECK(reg.unregister_match(a, "k", [](int v) { return v % 2 == 0; }) == 2);
    CHECK(reg.lookup("k") == std::vector<Reg::Entry>{{a.id(), 1}, {b.id(), 2}});
    CHECK(reg.values("k", a) == std::vector<int>{1});
    CHECK(reg.unregister(a, "k") == 1);
    CHECK(reg.keys(a).empty());
  }

  TEST_CASE("destroying an owner removes all its entries at once") {
    Reg reg(Keys::duplicate);
    auto keep = reg.make_owner();
    REQUIRE(reg.register_(keep, "shared", 0));
    {
      auto gone = reg.make_owner();
      register_all(reg, {{gone, "shared", 1}, {gone, "a", 2}, {gone, "b", 3}});
      REQUIRE(reg.count() == 4);
    }
    CHECK(reg.count() == 1);
    CHECK(reg.lookup("shared") == std::vector<Reg::Entry>{{keep.id(), 0}});
    CHECK(reg.lookup("a").empty());
    CHECK(reg.lookup("b").empty());
  }

  TEST_CASE(
      "destroying an owner tells listeners about each of its entries with reason owner_gone") {
    Reg reg(Keys::unique);
    Recorder rec(reg);
    OwnerId id{};
    {
      auto owner = reg.make_owner();
      id = owner.id();
      REQUIRE(reg.register_(owner, "a", 1));
      REQUIRE(reg.register_(owner, "b", 2));
    }
    auto events = rec.events();
    REQUIRE(events.size() == 4);
    std::vector<std::string> gone;
    for (std::size_t i = 2; i < 4; ++i) {
      CHECK(events[i].kind == RegistryEventKind::unregistered);
      CHECK(events[i].reason == UnregisterReason::owner_gone);
      CHECK(events[i].owner == id);
      CHECK(events[i].value == (events[i].key == "a" ? 1 : 2));
      gone.push_back(events[i].key);
    }
    std::sort(gone.begin(), gone.end());
    CHECK(gone == std::vector<std::string>{"a", "b"});
  }

  TEST_CASE("a unique key is free again once its owner is destroyed") {
    Reg reg(Keys::unique);
    auto first = std::make_unique<Reg::Owner>(reg.make_owner());
    REQUIRE(reg.register_(*first, "k", 1));
    first.reset();
    auto second = reg.make_owner();
    CHECK(reg.register_(second, "k", 2));
    CHECK(reg.lookup("k") == std::vector<Reg::Entry>{{second.id(), 2}});
  }

  TEST_CASE("moving an owner moves its entries and reset removes them") {
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    const OwnerId id = a.id();
    REQUIRE(reg.register_(a, "k", 1));
    Reg::Owner moved = std::move(a);
    CHECK(moved.id() == id);
    CHECK(reg.count() == 1);
    CHECK(reg.unregister(moved, "other") == 0);
    moved.reset();
    CHECK(moved.id() == OwnerId{});
    CHECK(reg.count() == 0);
  }

  TEST_CASE("owners and subscriptions may outlive their registry") {
    Reg::Owner owner;
    Subscription sub;
    {
      Reg reg(Keys::unique);
      owner = reg.make_owner();
      sub = reg.subscribe([](const Event&) {});
      REQUIRE(reg.register_(owner, "k", 1));
    }
    owner.reset();
    sub.reset();
    CHECK_FALSE(sub.active());
  }

  TEST_CASE("dispatch calls the function once with every entry of the key") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    REQUIRE(reg.register_(a, "topic", 1));
    REQUIRE(reg.register_(b, "topic", 2));
    int calls = 0;
    std::vector<Reg::Entry> seen;
    CHECK(reg.dispatch("topic", [&](std::span<const Reg::Entry> entries) {
      ++calls;
      seen.assign(entries.begin(), entries.end());
    }) == 2);
    CHECK(calls == 1);
    CHECK(seen == std::vector<Reg::Entry>{{a.id(), 1}, {b.id(), 2}});
  }

  TEST_CASE("dispatch does not call the function for a key without entries") {
    Reg reg(Keys::duplicate);
    int calls = 0;
    CHECK(reg.dispatch("nobody", [&](std::span<const Reg::Entry>) { ++calls; }) == 0);
    CHECK(calls == 0);
  }

  TEST_CASE("dispatch runs its function without the lock so the function may change the registry") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    REQUIRE(reg.register_(a, "topic", 1));
    reg.dispatch("topic", [&](std::span<const Reg::Entry>) {
      CHECK(reg.register_(a, "reply", 2));
      CHECK(reg.unregister(a, "topic") == 1);
    });
    CHECK(reg.lookup("reply").size() == 1);
    CHECK(reg.lookup("topic").empty());
  }

  TEST_CASE("keys lists the keys an owner holds once per entry") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    register_all(reg, {{a, "x", 1}, {a, "x", 2}, {a, "y", 3}, {b, "z", 4}});
    auto keys = reg.keys(a);
    std::sort(keys.begin(), keys.end());
    CHECK(keys == std::vector<std::string>{"x", "x", "y"});
    CHECK(reg.keys(b) == std::vector<std::string>{"z"});
    CHECK(reg.keys(reg.make_owner()).empty());
  }

  TEST_CASE("values returns what one owner registered under a key in registration order") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    register_all(reg, {{a, "k", 1}, {b, "k", 2}, {a, "k", 3}});
    CHECK(reg.values("k", a) == std::vector<int>{1, 3});
    CHECK(reg.values("k", b) == std::vector<int>{2});
    CHECK(reg.values("other", a).empty());
  }

  TEST_CASE("update_value changes the value of the owner's key in a unique registry") {
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    REQUIRE(reg.register_(a, "k", 1));
    auto updated = reg.update_value(a, "k", [](int& v) { v += 41; });
    REQUIRE(updated);
    CHECK(*updated == 42);
    CHECK(reg.lookup("k") == std::vector<Reg::Entry>{{a.id(), 42}});
  }

  TEST_CASE("update_value refuses a key the owner does not hold") {
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    REQUIRE(reg.register_(a, "k", 1));
    auto refused = reg.update_value(b, "k", [](int& v) { v = 0; });
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == Errc::not_found);
    CHECK(refused.error().message.find("'k'") != std::string::npos);
    CHECK_FALSE(reg.update_value(a, "missing", [](int& v) { v = 0; }));
    CHECK(reg.lookup("k") == std::vector<Reg::Entry>{{a.id(), 1}});
  }

  TEST_CASE("update_value is refused by a duplicate registry") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    REQUIRE(reg.register_(a, "k", 1));
    auto refused = reg.update_value(a, "k", [](int& v) { v = 0; });
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == Errc::invalid_argument);
  }

  TEST_CASE("count and count_key and count_match count entries") {
    Reg reg(Keys::duplicate);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    register_all(reg, {{a, "k", 1}, {b, "k", 2}, {b, "k", 4}, {a, "other", 5}});
    CHECK(reg.count() == 4);
    CHECK(reg.count_key("k") == 3);
    CHECK(reg.count_match("k", [](int v) { return v % 2 == 0; }) == 2);
    CHECK(reg.count_match("missing", [](int) { return true; }) == 0);
  }

  TEST_CASE("select returns the entries a predicate accepts as key and owner and value") {
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    register_all(reg, {{a, "x", 1}, {b, "y", 2}, {b, "z", 3}});
    const OwnerId bid = b.id();
    auto selected =
        reg.select([&](const std::string&, OwnerId owner, int v) { return owner == bid && v > 2; });
    CHECK(selected == std::vector<std::tuple<std::string, OwnerId, int>>{{"z", bid, 3}});
    CHECK(reg.select([](const std::string&, OwnerId, int) { return true; }).size() == 3);
  }

  TEST_CASE("meta values are stored and read back and deleted independently of entries") {
    Reg reg(Keys::unique);
    CHECK_FALSE(reg.meta("custom").has_value());
    reg.put_meta("custom", std::string("value"));
    reg.put_meta("number", 7);
    CHECK(reg.meta_as<std::string>("custom") == std::string("value"));
    CHECK(reg.meta_as<int>("number") == 7);
    CHECK_FALSE(reg.meta_as<int>("custom").has_value());
    reg.put_meta("number", 8);
    CHECK(reg.meta_as<int>("number") == 8);
    CHECK(reg.count() == 0);
    CHECK(reg.delete_meta("number"));
    CHECK_FALSE(reg.delete_meta("number"));
    CHECK_FALSE(reg.meta("number").has_value());
  }

  TEST_CASE("listeners hear registrations and requested unregistrations with their values") {
    Reg reg(Keys::duplicate);
    Recorder rec(reg);
    auto a = reg.make_owner();
    REQUIRE(reg.register_(a, "k", 1));
    REQUIRE(reg.register_(a, "k", 2));
    REQUIRE(reg.unregister_match(a, "k", [](int v) { return v == 2; }) == 1);
    REQUIRE(reg.unregister(a, "k") == 1);
    auto events = rec.events();
    REQUIRE(events.size() == 4);
    CHECK(is(events[0], RegistryEventKind::registered, "k", a.id()));
    CHECK(events[0].value == 1);
    CHECK(is(events[1], RegistryEventKind::registered, "k", a.id()));
    CHECK(is(events[2], RegistryEventKind::unregistered, "k", a.id(), UnregisterReason::requested));
    CHECK(events[2].value == 2);
    CHECK(is(events[3], RegistryEventKind::unregistered, "k", a.id(), UnregisterReason::requested));
    CHECK(events[3].value == 1);
  }

  TEST_CASE("a refused registration and a no-op unregister are not reported") {
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    REQUIRE(reg.register_(a, "k", 1));
    Recorder rec(reg);
    CHECK_FALSE(reg.register_(b, "k", 2));
    CHECK(reg.unregister(b, "k") == 0);
    CHECK(rec.events().empty());
  }

  TEST_CASE("a listener hears nothing after its subscription is destroyed") {
    Reg reg(Keys::unique);
    int heard = 0;
    auto owner = reg.make_owner();
    {
      auto sub = reg.subscribe([&](const Event&) { ++heard; });
      REQUIRE(reg.register_(owner, "a", 1));
    }
    REQUIRE(reg.register_(owner, "b", 2));
    CHECK(heard == 1);
  }

  TEST_CASE("a listener may call back into the registry and its own events follow in order") {
    Reg reg(Keys::unique);
    auto owner = reg.make_owner();
    std::vector<std::string> heard;
    auto sub = reg.subscribe([&](const Event& e) {
      heard.push_back(e.key);
      if (e.key == "first") {
        CHECK(reg.lookup("first").size() == 1);
        CHECK(reg.register_(owner, "from_listener", 2));
      }
    });
    REQUIRE(reg.register_(owner, "first", 1));
    CHECK(heard == std::vector<std::string>{"first", "from_listener"});
  }

  TEST_CASE("a listener may destroy its own subscription") {
    Reg reg(Keys::unique);
    auto owner = reg.make_owner();
    int heard = 0;
    Subscription sub;
    sub = reg.subscribe([&](const Event&) {
      ++heard;
      sub.reset();
    });
    REQUIRE(reg.register_(owner, "a", 1));
    REQUIRE(reg.register_(owner, "b", 2));
    CHECK(heard == 1);
  }

  // Races. Each one parks a thread at a sync point placed in registry.hpp, so the interleaving
  // it names happens on every run.

  TEST_CASE(
      "a unique register racing an owner's destruction loses while the owner's entries remain") {
    auto& sp = SyncPoints::instance();
    Reg reg(Keys::unique);
    auto doomed = std::make_unique<Reg::Owner>(reg.make_owner());
    const OwnerId doomed_id = doomed->id();
    REQUIRE(reg.register_(*doomed, "k", 1));
    Threads threads;  // after everything its threads use: joined first
    sp.arm("registry.owner_gone.remove");
    threads.spawn([&] { doomed.reset(); });
    REQUIRE(sp.wait_parked("registry.owner_gone.remove", 1));
    // The destructor has started but not removed anything: the old owner still holds the key.
    auto next = reg.make_owner();
    auto refused = reg.register_(next, "k", 2);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find(to_string(doomed_id)) != std::string::npos);
    CHECK(owners_of(reg.lookup("k")) == std::vector<OwnerId>{doomed_id});
    sp.release("registry.owner_gone.remove");
    threads.join();
    CHECK(reg.register_(next, "k", 2));
    CHECK(owners_of(reg.lookup("k")) == std::vector<OwnerId>{next.id()});
  }

  TEST_CASE(
      "a unique register succeeds once a dying owner's entries are gone even before listeners hear "
      "of it") {
    auto& sp = SyncPoints::instance();
    Reg reg(Keys::unique);
    auto doomed = std::make_unique<Reg::Owner>(reg.make_owner());
    const OwnerId doomed_id = doomed->id();
    REQUIRE(reg.register_(*doomed, "k", 1));
    Recorder rec(reg);
    Threads threads;  // after everything its threads use: joined first
    sp.arm("registry.owner_gone.notify");
    threads.spawn([&] { doomed.reset(); });
    REQUIRE(sp.wait_parked("registry.owner_gone.notify", 1));
    // Entries removed, destructor not returned, its events not delivered by the dying thread.
    CHECK(reg.lookup("k").empty());
    auto next = reg.make_owner();
    REQUIRE(reg.register_(next, "k", 2));
    CHECK(owners_of(reg.lookup("k")) == std::vector<OwnerId>{next.id()});
    // register_ returned, so its event was delivered, and the cleanup's event came first.
    auto events = rec.events();
    REQUIRE(events.size() == 2);
    CHECK(is(events[0], RegistryEventKind::unregistered, "k", doomed_id,
             UnregisterReason::owner_gone));
    CHECK(is(events[1], RegistryEventKind::registered, "k", next.id()));
    sp.release("registry.owner_gone.notify");
    threads.join();
    CHECK(rec.events().size() == 2);  // delivered once, not again by the dying thread
  }

  TEST_CASE("events reach listeners in the order of the changes when the first writer is delayed") {
    auto& sp = SyncPoints::instance();
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    REQUIRE(reg.register_(b, "second", 2));
    Recorder rec(reg);
    Threads threads;  // after everything its threads use: joined first
    sp.arm("registry.register.notify");
    threads.spawn([&] { CHECK(reg.register_(a, "first", 1)); });
    REQUIRE(sp.wait_parked("registry.register.notify", 1));
    // "first" is in the table; its writer has not delivered its event yet.
    REQUIRE(reg.unregister(b, "second") == 1);
    auto events = rec.events();
    REQUIRE(events.size() == 2);
    CHECK(is(events[0], RegistryEventKind::registered, "first", a.id()));
    CHECK(is(events[1], RegistryEventKind::unregistered, "second", b.id(),
             UnregisterReason::requested));
    sp.release("registry.register.notify");
    threads.join();
    CHECK(rec.events().size() == 2);
  }

  TEST_CASE(
      "a writer whose event another thread is delivering returns only after it was delivered") {
    auto& sp = SyncPoints::instance();
    Reg reg(Keys::unique);
    auto a = reg.make_owner();
    auto b = reg.make_owner();
    std::mutex mu;
    std::vector<std::string> heard;
    auto sub = reg.subscribe([&](const Event& e) {
      if (e.key == "slow") FLOWREG_SYNC_POINT("test.registry.slow_listener");
      if (e.key == "fast") FLOWREG_SYNC_POINT("test.registry.fast_listener");
      std::lock_guard lock(mu);
      heard.push_back(e.key);
    });
    std::atomic<bool> fast_returned{false};
    bool delivered_on_return = false;
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.registry.slow_listener");
    sp.arm("test.registry.fast_listener");
    sp.arm("listeners.await_drainer");
    threads.spawn([&] { CHECK(reg.register_(a, "slow", 1)); });
    REQUIRE(sp.wait_parked("test.registry.slow_listener", 1));
    threads.spawn([&] {
      CHECK(reg.register_(b, "fast", 2));
      fast_returned = true;
      std::lock_guard lock(mu);
      delivered_on_return = std::find(heard.begin(), heard.end(), "fast") != heard.end();
    });
    // The second writer found the first one delivering and is about to wait for it.
    REQUIRE(sp.wait_parked("listeners.await_drainer", 1));
    sp.release("listeners.await_drainer");
    sp.release("test.registry.slow_listener");
    // The first writer's thread now delivers the second writer's event, which has not returned.
    REQUIRE(sp.wait_parked("test.registry.fast_listener", 1));
    CHECK_FALSE(fast_returned.load());
    sp.release("test.registry.fast_listener");
    threads.join();
    CHECK(delivered_on_return);
    CHECK(heard == std::vector<std::string>{"slow", "fast"});
  }

  TEST_CASE("destroying a subscription waits for its listener running in another thread") {
    auto& sp = SyncPoints::instance();
    Reg reg(Keys::unique);
    auto owner = reg.make_owner();
    std::atomic<bool> listener_done{false};
    auto sub = reg.subscribe([&](const Event&) {
      FLOWREG_SYNC_POINT("test.registry.listener");
      listener_done = true;
    });
    bool done_when_reset_returned = false;
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.registry.listener");
    sp.arm("listeners.unsubscribe_wait");
    threads.spawn([&] { CHECK(reg.register_(owner, "k", 1)); });
    REQUIRE(sp.wait_parked("test.registry.listener", 1));
    threads.spawn([&] {
      sub.reset();
      done_when_reset_returned = listener_done.load();
    });
    REQUIRE(sp.wait_parked("listeners.unsubscribe_wait", 1));
    sp.release("listeners.unsubscribe_wait");
    sp.release("test.registry.listener");
    threads.join();
    CHECK(done_when_reset_returned);
  }

  TEST_CASE("readers never see torn entries or entries of destroyed owners during write storms") {
    Keys mode = Keys::unique;
    SUBCASE("unique keys") { mode = Keys::unique; }
    SUBCASE("duplicate keys") { mode = Keys::duplicate; }

    struct Stamp {
      int writer = 0;
      int round = 0;
      OwnerId owner{};
      std::string text;  // long enough to live on the heap: a torn copy would not match
    };
    auto text_of = [](int writer, int round, int key) {
      std::string t;
      for (int i = 0; i < 8; ++i) {
        t += "w" + std::to_string(writer) + "r" + std::to_string(round) + "k" + std::to_string(key);
      }
      return t;
    };
    constexpr int kWriters = 3;
    constexpr int kReaders = 2;
    constexpr int kRounds = 300;
    constexpr int kKeys = 4;

    Registry<int, Stamp> reg(mode);
    std::array<std::atomic<int>, kKeys> net{};  // registered minus unregistered, per key
    auto sub = reg.subscribe([&](const Registry<int, Stamp>::Event& e) {
      net[static_cast<std::size_t>(e.key)] += e.kind == RegistryEventKind::registered ? 1 : -1;
    });
    // dead_through[w] = last round whose owner's destructor had returned.
    std::array<std::atomic<int>, kWriters> dead_through{};
    for (auto& d : dead_through) d = -1;
    std::atomic<int> writers_left{kWriters};
    std::atomic<long> lookups{0};
    std::atomic<int> bad_owner{0}, torn{0}, dead_seen{0}, too_many{0};
    std::latch all_started(kWriters + kReaders);  // so that the storm overlaps the readers

    Threads threads;
    for (int w = 0; w < kWriters; ++w) {
      threads.spawn([&, w] {
        all_started.arrive_and_wait();
        for (int round = 0; round < kRounds; ++round) {
          {
            auto owner = reg.make_owner();
            for (int k = 0; k < kKeys; ++k) {
              (void)reg.register_(owner, k, Stamp{w, round, owner.id(), text_of(w, round, k)});
            }
            if (round % 2 == 0) reg.unregister(owner, round % kKeys);
          }
          dead_through[static_cast<std::size_t>(w)].store(round);
        }
        --writers_left;
      });
    }
    for (int r = 0; r < kReaders; ++r) {
      threads.spawn([&] {
        all_started.arrive_and_wait();
        do {
          std::array<int, kWriters> dead{};
          for (std::size_t w = 0; w < kWriters; ++w) dead[w] = dead_through[w].load();
          for (int k = 0; k < kKeys; ++k) {
            auto entries = reg.lookup(k);
            ++lookups;
            if (mode == Keys::unique && entries.size() > 1) ++too_many;
            for (const auto& [owner, stamp] : entries) {
              if (stamp.owner != owner) ++bad_owner;
              if (stamp.text != text_of(stamp.writer, stamp.round, k)) ++torn;
              if (stamp.round <= dead[static_cast<std::size_t>(stamp.writer)]) ++dead_seen;
            }
          }
        } while (writers_left.load() > 0);
      });
    }
    threads.join();
    CHECK(lookups.load() > 0);
    CHECK(too_many.load() == 0);
    CHECK(bad_owner.load() == 0);
    CHECK(torn.load() == 0);
    CHECK(dead_seen.load() == 0);
    CHECK(reg.count() == 0);
    for (auto& n : net) CHECK(n.load() == 0);
  }
}
