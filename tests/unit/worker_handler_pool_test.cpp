// The worker's handler threads (core/src/worker/handler_pool.hpp).

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "worker/handler_pool.hpp"

using flowreg::detail::HandlerPool;

TEST_SUITE("handler_pool") {
  TEST_CASE(
      "an exception escaping a job (a plugin's bad_alloc) ended the process with "
      "std::terminate: it is now the job's failure, with its text, and the thread runs on") {
    HandlerPool pool(1);
    std::promise<std::string> bad_alloc, runtime;
    HandlerPool::Job first;
    first.run = [] { throw std::bad_alloc(); };
    first.fail = [&](std::string what) { bad_alloc.set_value(std::move(what)); };
    HandlerPool::Job second;
    second.run = [] { throw std::runtime_error("out of luck"); };
    second.fail = [&](std::string what) { runtime.set_value(std::move(what)); };
    std::promise<void> ran;
    HandlerPool::Job third;
    third.run = [&] { ran.set_value(); };
    REQUIRE(pool.submit(std::move(first)));
    REQUIRE(pool.submit(std::move(second)));
    REQUIRE(pool.submit(std::move(third)));
    auto a = bad_alloc.get_future();
    auto b = runtime.get_future();
    auto c = ran.get_future();
    REQUIRE(a.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(a.get() == "std::bad_alloc");
    REQUIRE(b.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(b.get() == "out of luck");
    CHECK(c.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    CHECK(pool.close_and_wait(std::chrono::steady_clock::time_point::max()));
  }
}

TEST_SUITE("handler_pool") {
  TEST_CASE(
      "jobs submitted together wake as many threads as they need: each runs at once on its own "
      "thread; once closed, none is queued") {
    for (const int jobs : {4, 3}) {
      CAPTURE(jobs);
      HandlerPool pool(4);
      // Every thread asleep first (a thread just started takes a job without being woken).
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      // Each job waits until every job of the batch is running: were a thread left asleep, the
      // last job would wait in the queue and no job would end.
      std::mutex mu;
      std::condition_variable cv;
      int running = 0;
      std::atomic<int> ended{0};
      std::vector<HandlerPool::Job> batch;
      for (int i = 0; i < jobs; ++i) {
        HandlerPool::Job job;
        job.run = [&, jobs] {
          std::unique_lock lock(mu);
          ++running;
          cv.notify_all();
          if (cv.wait_for(lock, std::chrono::seconds(60), [&] { return running == jobs; })) ++ended;
        };
        batch.push_back(std::move(job));
      }
      REQUIRE(pool.submit_all(std::move(batch)));
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(90);
      while (ended.load() < jobs && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      CHECK(ended.load() == jobs);
      CHECK(pool.close_and_wait(std::chrono::steady_clock::time_point::max()));
      std::atomic<int> touched{0};
      std::vector<HandlerPool::Job> late(2);
      for (auto& job : late) {
        job.run = [&] { ++touched; };
        job.cancel = [&] { ++touched; };
      }
      CHECK_FALSE(pool.submit_all(std::move(late)));
      CHECK(touched.load() == 0);
    }
  }
}

TEST_SUITE("handler_pool") {
  TEST_CASE(
      "a job abandoned while it runs gets a replacement thread, up to the cap; when it returns, "
      "the pool goes back to its size") {
    HandlerPool pool(2);  // cap: 2 abandoned threads
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    int blocked = 0;
    const auto block = [&] {
      std::unique_lock lock(mu);
      ++blocked;
      cv.notify_all();
      cv.wait(lock, [&] { return open; });
    };
    const auto wait_blocked = [&](int n) {
      std::unique_lock lock(mu);
      return cv.wait_for(lock, std::chrono::seconds(30), [&] { return blocked >= n; });
    };
    for (int i = 0; i < 2; ++i) REQUIRE(pool.submit({block, {}, {}}));
    REQUIRE(wait_blocked(2));
    CHECK(pool.healthy() == 2);
    // Both given up: each gets a replacement, which runs the next jobs.
    CHECK(pool.abandon());
    CHECK(pool.abandon());
    CHECK(pool.threads() == 4);
    CHECK(pool.healthy() == 2);
    std::promise<void> ran;
    REQUIRE(pool.submit({[&] { ran.set_value(); }, {}, {}}));
    CHECK(ran.get_future().wait_for(std::chrono::seconds(30)) == std::future_status::ready);
    // A third, beyond the cap: no replacement, one thread fewer can run jobs.
    REQUIRE(pool.submit({block, {}, {}}));
    REQUIRE(wait_blocked(3));
    CHECK_FALSE(pool.abandon());
    CHECK(pool.threads() == 4);
    CHECK(pool.healthy() == 1);

    {
      std::lock_guard lock(mu);
      open = true;
    }
    cv.notify_all();
    for (int i = 0; i < 3; ++i) pool.returned();
    // Two threads above the size exit once their jobs returned; the pool still runs jobs.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (pool.threads() != 2 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    CHECK(pool.threads() == 2);
    CHECK(pool.healthy() == 2);
    std::promise<void> after;
    REQUIRE(pool.submit({[&] { after.set_value(); }, {}, {}}));
    CHECK(after.get_future().wait_for(std::chrono::seconds(30)) == std::future_status::ready);
    CHECK(pool.close_and_wait(std::chrono::steady_clock::time_point::max()));
  }
}
