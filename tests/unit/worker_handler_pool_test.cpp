// The worker's handler threads (core/src/worker/handler_pool.hpp).

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <new>
#include <stdexcept>
#include <string>

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
