#pragma once
// A few RunStore connections shared by a worker's flow loops: a loop holds one only for the
// length of one call, so many flows do not cost one PostgreSQL connection each.
//
// Connections are opened on demand, up to `size`, and a connection whose call found it broken
// (RunStore::connection_lost) is closed instead of returned: the next call opens a fresh one. So
// after a PostgreSQL restart the pool heals by itself; callers see Errc::unavailable meanwhile and
// retry with backoff.
//
// Thread-safety: every member function may be called concurrently. Not copyable or movable.

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "flowreg/error.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

class StorePool {
 public:
  StorePool(std::string conninfo, int size)
      : conninfo_(std::move(conninfo)), size_(size < 1 ? 1 : size) {}
  StorePool(const StorePool&) = delete;
  StorePool& operator=(const StorePool&) = delete;

  // Runs fn(RunStore&) on a pooled connection (waiting for one when all `size` are busy) and
  // returns what it returns. fn returns a Result; when no connection can be opened, that error
  // (Errc::unavailable when the server cannot be reached) is returned without calling fn.
  template <class F>
  auto with(F&& fn) -> decltype(fn(std::declval<RunStore&>())) {
    auto store = acquire();
    if (!store) return tl::unexpected(std::move(store.error()));
    auto result = fn(**store);
    release(std::move(*store));
    return result;
  }

 private:
  Result<std::unique_ptr<RunStore>> acquire();
  void release(std::unique_ptr<RunStore> store);

  const std::string conninfo_;
  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<RunStore>> idle_;
  int open_ = 0;  // idle + in use
};

}  // namespace flowreg::detail
