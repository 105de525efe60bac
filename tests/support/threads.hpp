#pragma once
// Threads of one concurrency test case, released safely when the test fails half-way.

#include <thread>
#include <utility>
#include <vector>

#include "flowreg/sync_point.hpp"

namespace flowreg::test {

// Threads of one test case. Destroying it releases every sync point first, so a failed REQUIRE
// never leaves a parked thread that join() would wait for forever.
class Threads {
 public:
  Threads() { detail::SyncPoints::instance().reset(); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;
  ~Threads() {
    detail::SyncPoints::instance().reset();
    join();
  }

  template <class F>
  void spawn(F&& f) {
    threads_.emplace_back(std::forward<F>(f));
  }
  void join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::vector<std::thread> threads_;
};

}  // namespace flowreg::test
