#include "flowreg/sync_point.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "support/threads.hpp"

using flowreg::detail::SyncPoints;
using namespace std::chrono_literals;

using flowreg::test::Threads;

namespace {

// Runs fn on another thread and reports whether it returned before the deadlock guard expired.
template <class F>
bool returns(F fn) {
  auto done = std::async(std::launch::async, std::move(fn));
  const bool ok = done.wait_for(10s) == std::future_status::ready;
  if (!ok) SyncPoints::instance().reset();  // unblock it so the future's destructor can join
  return ok;
}

}  // namespace

TEST_SUITE("sync_point") {
  TEST_CASE("nothing is armed by default and an unarmed point does not park") {
    Threads threads;
    CHECK_FALSE(SyncPoints::instance().any_armed());
    CHECK(returns([] { FLOWREG_SYNC_POINT("sync_point.test.unarmed"); }));
  }

  TEST_CASE("a thread reaching an armed point parks there until the point is released") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    sp.arm("sync_point.test.a");
    CHECK(sp.any_armed());
    std::atomic<bool> passed{false};
    threads.spawn([&] {
      FLOWREG_SYNC_POINT("sync_point.test.a");
      passed = true;
    });
    REQUIRE(sp.wait_parked("sync_point.test.a", 1));
    CHECK_FALSE(passed.load());
    sp.release("sync_point.test.a");
    threads.join();
    CHECK(passed.load());
  }

  TEST_CASE("wait_parked counts every thread parked at the point") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    sp.arm("sync_point.test.many");
    std::atomic<int> passed{0};
    for (int i = 0; i < 3; ++i) {
      threads.spawn([&] {
        FLOWREG_SYNC_POINT("sync_point.test.many");
        ++passed;
      });
    }
    REQUIRE(sp.wait_parked("sync_point.test.many", 3));
    CHECK(passed.load() == 0);
    sp.release("sync_point.test.many");
    threads.join();
    CHECK(passed.load() == 3);
  }

  TEST_CASE("wait_parked gives up after its timeout when too few threads are parked") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    sp.arm("sync_point.test.empty");
    CHECK_FALSE(sp.wait_parked("sync_point.test.empty", 1, 20ms));
    CHECK_FALSE(sp.wait_parked("sync_point.test.never_armed", 1, 20ms));
  }

  TEST_CASE("a released point is disarmed so later threads pass through") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    sp.arm("sync_point.test.once");
    sp.release("sync_point.test.once");
    CHECK_FALSE(sp.any_armed());
    CHECK(returns([] { FLOWREG_SYNC_POINT("sync_point.test.once"); }));
  }

  TEST_CASE("releasing one point leaves the other points armed") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    sp.arm("sync_point.test.first");
    sp.arm("sync_point.test.second");
    std::atomic<bool> second_passed{false};
    threads.spawn([&] {
      FLOWREG_SYNC_POINT("sync_point.test.second");
      second_passed = true;
    });
    REQUIRE(sp.wait_parked("sync_point.test.second", 1));
    sp.release("sync_point.test.first");
    CHECK(sp.any_armed());
    CHECK(sp.wait_parked("sync_point.test.second", 1));
    CHECK_FALSE(second_passed.load());
    sp.release("sync_point.test.second");
    threads.join();
    CHECK(second_passed.load());
  }

  TEST_CASE("reset releases the threads parked at every point and disarms everything") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    sp.arm("sync_point.test.x");
    sp.arm("sync_point.test.y");
    std::atomic<int> passed{0};
    threads.spawn([&] {
      FLOWREG_SYNC_POINT("sync_point.test.x");
      ++passed;
    });
    threads.spawn([&] {
      FLOWREG_SYNC_POINT("sync_point.test.y");
      ++passed;
    });
    REQUIRE(sp.wait_parked("sync_point.test.x", 1));
    REQUIRE(sp.wait_parked("sync_point.test.y", 1));
    sp.reset();
    threads.join();
    CHECK(passed.load() == 2);
    CHECK_FALSE(sp.any_armed());
  }

  TEST_CASE("on runs the callback in the reaching thread instead of parking") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    std::thread::id ran_in;
    int calls = 0;
    sp.on("sync_point.test.callback", [&] {
      ran_in = std::this_thread::get_id();
      ++calls;
    });
    std::thread::id reacher;
    CHECK(returns([&] {
      reacher = std::this_thread::get_id();
      FLOWREG_SYNC_POINT("sync_point.test.callback");
    }));
    CHECK(calls == 1);
    CHECK(ran_in == reacher);
    sp.release("sync_point.test.callback");
    FLOWREG_SYNC_POINT("sync_point.test.callback");
    CHECK(calls == 1);
  }

  TEST_CASE("a callback may arm and release points itself") {
    Threads threads;
    auto& sp = SyncPoints::instance();
    sp.on("sync_point.test.outer", [&] { sp.arm("sync_point.test.inner"); });
    std::atomic<bool> passed{false};
    threads.spawn([&] {
      FLOWREG_SYNC_POINT("sync_point.test.outer");
      FLOWREG_SYNC_POINT("sync_point.test.inner");
      passed = true;
    });
    REQUIRE(sp.wait_parked("sync_point.test.inner", 1));
    CHECK_FALSE(passed.load());
    sp.release("sync_point.test.inner");
    threads.join();
    CHECK(passed.load());
  }
}
