#include "flowreg/tools/handle_registry.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/sync_point.hpp"
#include "support/threads.hpp"

using namespace flowreg;
using flowreg::detail::SyncPoints;
using namespace std::chrono_literals;

using flowreg::test::Threads;

namespace {

struct Opts {
  int depth = 1;
  friend bool operator==(const Opts&, const Opts&) = default;
};

// A handle with both optional hooks: alive() and stop().
struct Repo {
  Repo(std::string u, Opts o) : url(std::move(u)), opts(o) {}
  std::string url;
  Opts opts;
  std::atomic<bool> alive_flag{true};
  std::atomic<int> stops{0};
  bool alive() const { return alive_flag.load(); }
  void stop() { ++stops; }
};

// A handle with neither: death is reported with report_dead().
struct Plain {
  int value = 0;
};

using Repos = HandleRegistry<std::string, Repo, Opts>;
using RepoPtr = std::shared_ptr<Repo>;
using Event = Repos::Event;

// Deadlock guard: true when the future is ready within 10 s. Otherwise releases every sync point,
// so that the future's destructor can join its thread, and returns false.
template <class T>
bool ready(std::future<T>& f) {
  const bool ok = f.wait_for(10s) == std::future_status::ready;
  if (!ok) SyncPoints::instance().reset();
  return ok;
}

// A factory that counts its calls and makes a Repo from the key and options it is given.
struct CountingFactory {
  std::atomic<int> calls{0};
  auto operator()() {
    return [this](const std::string& key, const Opts& opts) -> Result<RepoPtr> {
      ++calls;
      return std::make_shared<Repo>(key, opts);
    };
  }
};

// A factory that stops at the sync point `name` (when it is armed), then makes a Repo from the key
// and options it is given.
auto parking_factory(std::string name) {
  return [name = std::move(name)](const std::string& key, const Opts& opts) -> Result<RepoPtr> {
    FLOWREG_SYNC_POINT(name);
    return std::make_shared<Repo>(key, opts);
  };
}

// Starts the handle of `key` through make, then marks it no longer alive; returns it.
RepoPtr start_then_kill(Repos& reg, CountingFactory& make, const std::string& key) {
  auto started = reg.get_or_start(key, make());
  REQUIRE(started);
  (*started)->alive_flag = false;
  return *started;
}

class Recorder {
 public:
  explicit Recorder(Repos& reg)
      : sub_(reg.subscribe([this](const Event& e) {
          std::lock_guard lock(mu_);
          events_.push_back(e);
        })) {}
  std::vector<Event> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  std::size_t count(HandleEventKind kind) const {
    std::lock_guard lock(mu_);
    return static_cast<std::size_t>(std::count_if(events_.begin(), events_.end(),
                                                  [&](const Event& e) { return e.kind == kind; }));
  }

 private:
  mutable std::mutex mu_;
  std::vector<Event> events_;
  Subscription sub_;
};

}  // namespace

TEST_SUITE("handle_registry") {
  TEST_CASE("calls on a registry that was never started fail with not_started") {
    Repos reg;
    CountingFactory make;
    auto got = reg.get_or_start("a", make());
    REQUIRE_FALSE(got);
    CHECK(got.error().code == Errc::not_started);
    CHECK(got.error().message.find("'a'") != std::string::npos);
    auto stopped = reg.stop("a");
    REQUIRE_FALSE(stopped);
    CHECK(stopped.error().code == Errc::not_started);
    CHECK(make.calls == 0);
    CHECK(reg.lookup("a") == nullptr);
    CHECK(reg.count() == 0);
    CHECK(reg.list().empty());
    CHECK_FALSE(reg.running());
  }

  TEST_CASE("get_or_start runs the factory once and returns the same handle to later callers") {
    Repos reg;
    REQUIRE(reg.start());
    CountingFactory first, second;
    auto a = reg.get_or_start("a", first());
    REQUIRE(a);
    auto again = reg.get_or_start("a", second());
    REQUIRE(again);
    CHECK(*again == *a);
    CHECK(first.calls == 1);
    CHECK(second.calls == 0);
    CHECK(reg.lookup("a") == *a);
  }

  TEST_CASE("the factory gets the key and the first caller's options") {
    Repos reg;
    REQUIRE(reg.start());
    CountingFactory make;
    auto a = reg.get_or_start("repo", make(), Opts{7});
    REQUIRE(a);
    CHECK((*a)->url == "repo");
    CHECK((*a)->opts.depth == 7);
  }

  TEST_CASE("a factory taking no arguments is accepted") {
    Repos reg;
    REQUIRE(reg.start());
    auto a =
        reg.get_or_start("a", [] { return Result<RepoPtr>(std::make_shared<Repo>("x", Opts{})); });
    REQUIRE(a);
    CHECK((*a)->url == "x");
  }

  TEST_CASE("a failed start returns the factory's error and the next call tries again") {
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    auto failed = reg.get_or_start("a", [] {
      return Result<RepoPtr>(make_error(Errc::io, "clone of 'a' failed: disk full"));
    });
    REQUIRE_FALSE(failed);
    CHECK(failed.error().code == Errc::io);
    CHECK(failed.error().message == "clone of 'a' failed: disk full");
    CHECK(reg.lookup("a") == nullptr);
    CHECK(reg.count() == 0);
    CountingFactory make;
    CHECK(reg.get_or_start("a", make()));
    CHECK(make.calls == 1);
    auto events = rec.events();
    REQUIRE(events.size() == 2);
    CHECK(events[0].kind == HandleEventKind::start_failed);
    REQUIRE(events[0].error.has_value());
    CHECK(events[0].error->code == Errc::io);
    CHECK(events[1].kind == HandleEventKind::started);
  }

  TEST_CASE("a factory that throws is reported as an internal error naming the key") {
    Repos reg;
    REQUIRE(reg.start());
    auto got = reg.get_or_start("a", []() -> Result<RepoPtr> { throw std::runtime_error("boom"); });
    REQUIRE_FALSE(got);
    CHECK(got.error().code == Errc::internal);
    CHECK(got.error().message.find("'a'") != std::string::npos);
    CHECK(got.error().message.find("boom") != std::string::npos);
    CHECK(reg.count() == 0);
  }

  TEST_CASE("a factory that returns a null handle is an error") {
    Repos reg;
    REQUIRE(reg.start());
    auto got = reg.get_or_start("a", [] { return Result<RepoPtr>(RepoPtr()); });
    REQUIRE_FALSE(got);
    CHECK(got.error().code == Errc::internal);
    CHECK(reg.lookup("a") == nullptr);
  }

  TEST_CASE("options that differ from the first caller's are ignored and reported") {
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    CountingFactory make;
    auto first = reg.get_or_start("a", make(), Opts{1});
    auto later = reg.get_or_start("a", make(), Opts{2});
    REQUIRE(first);
    REQUIRE(later);
    CHECK(*later == *first);
    CHECK((*later)->opts.depth == 1);
    auto events = rec.events();
    REQUIRE(events.size() == 2);
    CHECK(events[1].kind == HandleEventKind::options_ignored);
    CHECK(events[1].key == "a");
    CHECK(events[1].options == Opts{1});
    CHECK(events[1].ignored_options == Opts{2});
  }

  TEST_CASE("equal options of a later caller are not reported") {
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    CountingFactory make;
    REQUIRE(reg.get_or_start("a", make(), Opts{3}));
    REQUIRE(reg.get_or_start("a", make(), Opts{3}));
    CHECK(rec.count(HandleEventKind::options_ignored) == 0);
    CHECK(rec.count(HandleEventKind::started) == 1);
  }

  TEST_CASE("stop removes and stops the handle and the next call starts a fresh one") {
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    CountingFactory make;
    auto old = reg.get_or_start("a", make());
    REQUIRE(old);
    REQUIRE(reg.stop("a"));
    CHECK((*old)->stops == 1);
    CHECK(reg.lookup("a") == nullptr);
    auto fresh = reg.get_or_start("a", make());
    REQUIRE(fresh);
    CHECK(*fresh != *old);
    CHECK(make.calls == 2);
    CHECK(rec.count(HandleEventKind::stopped) == 1);
  }

  TEST_CASE("stop of a key that is not there succeeds") {
    Repos reg;
    REQUIRE(reg.start());
    CHECK(reg.stop("nothing"));
  }

  TEST_CASE("a handle that is no longer alive is replaced by the next get_or_start") {
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    CountingFactory make;
    const RepoPtr old = start_then_kill(reg, make, "a");
    auto fresh = reg.get_or_start("a", make());
    REQUIRE(fresh);
    CHECK(*fresh != old);
    CHECK(make.calls == 2);
    CHECK(old->stops == 0);  // dead handles are not stopped
    auto events = rec.events();
    REQUIRE(events.size() == 3);
    CHECK(events[1].kind == HandleEventKind::died);
    CHECK(events[1].handle == old);
    CHECK(events[2].kind == HandleEventKind::started);
  }

  TEST_CASE("lookup drops a handle that is no longer alive") {
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    CountingFactory make;
    start_then_kill(reg, make, "a");
    CHECK(reg.lookup("a") == nullptr);
    CHECK(reg.count() == 0);
    CHECK(rec.count(HandleEventKind::died) == 1);
  }

  TEST_CASE("report_dead removes the reported handle and ignores a stale report") {
    HandleRegistry<int, Plain, int> reg;
    REQUIRE(reg.start());
    int calls = 0;
    auto factory = [&] {
      ++calls;
      return Result<std::shared_ptr<Plain>>(std::make_shared<Plain>(Plain{calls}));
    };
    auto old = reg.get_or_start(1, factory);
    REQUIRE(old);
    CHECK(reg.report_dead(1, *old));
    CHECK(reg.lookup(1) == nullptr);
    auto fresh = reg.get_or_start(1, factory);
    REQUIRE(fresh);
    CHECK((*fresh)->value == 2);
    CHECK_FALSE(reg.report_dead(1, *old));  // arrives after the restart: changes nothing
    CHECK(reg.lookup(1) == *fresh);
    CHECK_FALSE(reg.report_dead(2, *fresh));
  }

  TEST_CASE("count and list show the started handles") {
    Repos reg;
    REQUIRE(reg.start());
    CountingFactory make;
    REQUIRE(reg.get_or_start("a", make()));
    REQUIRE(reg.get_or_start("b", make()));
    CHECK(reg.count() == 2);
    auto keys = reg.list();
    std::sort(keys.begin(), keys.end());
    CHECK(keys == std::vector<std::string>{"a", "b"});
  }

  TEST_CASE("stop_all stops every handle and refuses calls until the registry is started again") {
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    CountingFactory make;
    auto a = reg.get_or_start("a", make());
    auto b = reg.get_or_start("b", make());
    REQUIRE(a);
    REQUIRE(b);
    reg.stop_all();
    CHECK((*a)->stops == 1);
    CHECK((*b)->stops == 1);
    CHECK(rec.count(HandleEventKind::stopped) == 2);
    CHECK(reg.count() == 0);
    auto refused = reg.get_or_start("a", make());
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == Errc::not_started);
    REQUIRE(reg.start());
    CHECK(reg.get_or_start("a", make()));
    CHECK(make.calls == 3);
  }

  TEST_CASE("the destructor stops every handle") {
    RepoPtr kept;
    {
      Repos reg;
      REQUIRE(reg.start());
      CountingFactory make;
      auto a = reg.get_or_start("a", make());
      REQUIRE(a);
      kept = *a;
    }
    CHECK(kept->stops == 1);
  }

  // Races. Each one parks threads at sync points (FLOWREG_SYNC_POINT("handle_registry.wait") in
  // handle_registry.hpp, and test points inside the factories), so the interleaving it names
  // happens on every run.

  TEST_CASE("64 concurrent callers for one key run the factory once and all get the same handle") {
    constexpr int kCallers = 64;
    auto& sp = SyncPoints::instance();
    Repos reg;
    REQUIRE(reg.start());
    std::atomic<int> calls{0};
    auto factory = [&](const std::string& key, const Opts& opts) -> Result<RepoPtr> {
      ++calls;
      FLOWREG_SYNC_POINT("test.handle.factory");
      return std::make_shared<Repo>(key, opts);
    };
    std::vector<RepoPtr> got(kCallers);
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.handle.factory");
    sp.arm("handle_registry.wait");
    for (int i = 0; i < kCallers; ++i) {
      threads.spawn([&, i] {
        auto r = reg.get_or_start("shared", factory);
        if (r) got[static_cast<std::size_t>(i)] = *r;
      });
    }
    // One caller is inside the factory and every other one joined its start.
    REQUIRE(sp.wait_parked("test.handle.factory", 1));
    REQUIRE(sp.wait_parked("handle_registry.wait", kCallers - 1));
    sp.release("handle_registry.wait");
    sp.release("test.handle.factory");
    threads.join();
    CHECK(calls == 1);
    REQUIRE(got[0] != nullptr);
    CHECK(std::all_of(got.begin(), got.end(), [&](const RepoPtr& h) { return h == got[0]; }));
    CHECK(reg.count() == 1);
  }

  TEST_CASE("a slow start for one key does not delay callers for another key") {
    auto& sp = SyncPoints::instance();
    Repos reg;
    REQUIRE(reg.start());
    auto slow = parking_factory("test.handle.slow_factory");
    CountingFactory make;
    std::promise<RepoPtr> slow_result;
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.handle.slow_factory");
    sp.arm("handle_registry.wait");
    threads.spawn([&] {
      auto r = reg.get_or_start("slow", slow);
      slow_result.set_value(r ? *r : nullptr);
    });
    REQUIRE(sp.wait_parked("test.handle.slow_factory", 1));
    threads.spawn([&] { CHECK(reg.get_or_start("slow", make())); });
    REQUIRE(sp.wait_parked("handle_registry.wait", 1));  // same key: waits
    // While "slow" is still starting, everything about other keys completes.
    auto other = std::async(std::launch::async, [&] {
      auto fast = reg.get_or_start("fast", make());
      return fast && reg.lookup("fast") == *fast && reg.count() == 1 &&
             reg.list() == std::vector<std::string>{"fast"} && reg.lookup("slow") == nullptr &&
             reg.stop("fast").has_value();
    });
    REQUIRE(ready(other));
    CHECK(other.get());
    CHECK(sp.wait_parked("test.handle.slow_factory", 1));  // still parked in its factory
    sp.release("test.handle.slow_factory");
    sp.release("handle_registry.wait");
    auto slow_handle = slow_result.get_future();
    REQUIRE(ready(slow_handle));
    threads.join();
    CHECK(slow_handle.get() != nullptr);
    CHECK(make.calls == 1);  // only for "fast": the second "slow" caller joined
  }

  TEST_CASE(
      "a failing start reaches every waiting caller with the same error and the next call "
      "succeeds") {
    constexpr int kWaiters = 4;
    auto& sp = SyncPoints::instance();
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    std::atomic<int> calls{0};
    auto failing = [&]() -> Result<RepoPtr> {
      ++calls;
      FLOWREG_SYNC_POINT("test.handle.failing_factory");
      return make_error(Errc::io, "clone failed");
    };
    std::vector<Result<RepoPtr>> waiter_results(kWaiters, RepoPtr());
    std::promise<Result<RepoPtr>> leader_result;
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.handle.failing_factory");
    sp.arm("handle_registry.wait");
    threads.spawn([&] { leader_result.set_value(reg.get_or_start("k", failing)); });
    REQUIRE(sp.wait_parked("test.handle.failing_factory", 1));
    for (int i = 0; i < kWaiters; ++i) {
      threads.spawn(
          [&, i] { waiter_results[static_cast<std::size_t>(i)] = reg.get_or_start("k", failing); });
    }
    // Every waiter joined the start before it fails.
    REQUIRE(sp.wait_parked("handle_registry.wait", kWaiters));
    sp.release("test.handle.failing_factory");
    auto leader = leader_result.get_future();
    REQUIRE(ready(leader));
    auto leader_error = leader.get();
    REQUIRE_FALSE(leader_error);
    CHECK(reg.lookup("k") == nullptr);
    // The failure is over; the waiters resume only now and must still get its error.
    sp.release("handle_registry.wait");
    threads.join();
    CHECK(calls == 1);
    for (const auto& r : waiter_results) {
      REQUIRE_FALSE(r);
      CHECK(r.error().code == Errc::io);
      CHECK(r.error().message == "clone failed");
    }
    CHECK(rec.count(HandleEventKind::start_failed) == 1);
    CountingFactory make;
    CHECK(reg.get_or_start("k", make()));
    CHECK(make.calls == 1);
  }

  TEST_CASE(
      "a caller joining a start in progress with other options is reported and gets the first "
      "handle") {
    auto& sp = SyncPoints::instance();
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    auto parked = parking_factory("test.handle.factory");
    RepoPtr first, second;
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.handle.factory");
    sp.arm("handle_registry.wait");
    threads.spawn([&] {
      auto r = reg.get_or_start("k", parked, Opts{1});
      if (r) first = *r;
    });
    REQUIRE(sp.wait_parked("test.handle.factory", 1));
    threads.spawn([&] {
      auto r = reg.get_or_start("k", parked, Opts{2});
      if (r) second = *r;
    });
    REQUIRE(sp.wait_parked("handle_registry.wait", 1));
    auto events = rec.events();
    REQUIRE(events.size() == 1);
    CHECK(events[0].kind == HandleEventKind::options_ignored);
    CHECK(events[0].handle == nullptr);  // not started yet
    CHECK(events[0].options == Opts{1});
    CHECK(events[0].ignored_options == Opts{2});
    sp.release("handle_registry.wait");
    sp.release("test.handle.factory");
    threads.join();
    REQUIRE(first != nullptr);
    CHECK(second == first);
    CHECK(first->opts.depth == 1);
  }

  TEST_CASE(
      "stop during a start abandons it so every caller gets not_started and the late handle is "
      "stopped") {
    auto& sp = SyncPoints::instance();
    Repos reg;
    REQUIRE(reg.start());
    Recorder rec(reg);
    RepoPtr made;
    auto parked = [&](const std::string& key, const Opts& opts) -> Result<RepoPtr> {
      FLOWREG_SYNC_POINT("test.handle.factory");
      made = std::make_shared<Repo>(key, opts);
      return made;
    };
    std::promise<Result<RepoPtr>> leader_result;
    Result<RepoPtr> waiter = RepoPtr();
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.handle.factory");
    sp.arm("handle_registry.wait");
    threads.spawn([&] { leader_result.set_value(reg.get_or_start("k", parked)); });
    REQUIRE(sp.wait_parked("test.handle.factory", 1));
    threads.spawn([&] { waiter = reg.get_or_start("k", parked); });
    REQUIRE(sp.wait_parked("handle_registry.wait", 1));
    auto stopped = std::async(std::launch::async, [&] { return reg.stop("k").has_value(); });
    REQUIRE(ready(stopped));  // stop does not wait for the factory
    CHECK(stopped.get());
    sp.release("test.handle.factory");
    auto leader = leader_result.get_future();
    REQUIRE(ready(leader));
    auto leader_got = leader.get();
    REQUIRE_FALSE(leader_got);
    CHECK(leader_got.error().code == Errc::not_started);
    sp.release("handle_registry.wait");
    threads.join();
    REQUIRE_FALSE(waiter);
    CHECK(waiter.error().code == Errc::not_started);
    REQUIRE(made != nullptr);
    CHECK(made->stops == 1);
    CHECK(reg.lookup("k") == nullptr);
    CHECK(rec.count(HandleEventKind::stopped) == 1);
    CHECK(rec.count(HandleEventKind::started) == 0);
    CountingFactory make;
    CHECK(reg.get_or_start("k", make()));
    CHECK(make.calls == 1);
  }

  TEST_CASE("stop_all during a start fails it with not_started and stops the late handle") {
    auto& sp = SyncPoints::instance();
    Repos reg;
    REQUIRE(reg.start());
    RepoPtr made;
    auto parked = [&](const std::string& key, const Opts& opts) -> Result<RepoPtr> {
      FLOWREG_SYNC_POINT("test.handle.factory");
      made = std::make_shared<Repo>(key, opts);
      return made;
    };
    std::promise<Result<RepoPtr>> leader_result;
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.handle.factory");
    threads.spawn([&] { leader_result.set_value(reg.get_or_start("k", parked)); });
    REQUIRE(sp.wait_parked("test.handle.factory", 1));
    auto stopped = std::async(std::launch::async, [&] { reg.stop_all(); });
    REQUIRE(ready(stopped));
    sp.release("test.handle.factory");
    auto leader = leader_result.get_future();
    REQUIRE(ready(leader));
    auto got = leader.get();
    REQUIRE_FALSE(got);
    CHECK(got.error().code == Errc::not_started);
    threads.join();
    REQUIRE(made != nullptr);
    CHECK(made->stops == 1);
    CHECK(reg.count() == 0);
  }

  TEST_CASE("a restarted key is not disturbed by the abandoned start that finishes late") {
    auto& sp = SyncPoints::instance();
    Repos reg;
    REQUIRE(reg.start());
    auto parked = parking_factory("test.handle.factory");
    Threads threads;  // after everything its threads use: joined first
    sp.arm("test.handle.factory");
    threads.spawn([&] { CHECK_FALSE(reg.get_or_start("k", parked)); });
    REQUIRE(sp.wait_parked("test.handle.factory", 1));
    REQUIRE(reg.stop("k"));
    CountingFactory make;
    auto restarted = std::async(std::launch::async, [&] { return reg.get_or_start("k", make()); });
    REQUIRE(ready(restarted));  // a new start while the old one is still parked in its factory
    auto fresh = restarted.get();
    REQUIRE(fresh);
    sp.release("test.handle.factory");
    threads.join();
    CHECK(reg.lookup("k") == *fresh);
    CHECK((*fresh)->stops == 0);
  }
}
