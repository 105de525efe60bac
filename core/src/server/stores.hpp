#pragma once
// The run store's connections for `flowreg serve`'s request threads.
//
// Thread-safety: with() may be called from any number of threads at once; each call has a
// connection of its own for its duration.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "flowreg/thread_annotations.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

// RunStore connections for the request threads: one per call, opened on demand, a broken one
// dropped instead of returned.
class Stores {
 public:
  explicit Stores(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  Stores(const Stores&) = delete;
  Stores& operator=(const Stores&) = delete;

  // fn(RunStore&) on an idle connection, or a new one; returns what fn returns, or the error of
  // connecting (fn must return a Result).
  template <class F>
  auto with(F&& fn) -> decltype(fn(std::declval<RunStore&>())) {
    std::unique_ptr<RunStore> store;
    {
      MutexLock lock(mu_);
      if (!idle_.empty()) {
        store = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (!store) {
      auto fresh = RunStore::connect(conninfo_);
      if (!fresh) return tl::unexpected(std::move(fresh.error()));
      store = std::make_unique<RunStore>(std::move(*fresh));
    }
    auto result = fn(*store);
    if (!store->connection_lost()) {
      MutexLock lock(mu_);
      idle_.push_back(std::move(store));
    }
    return result;
  }

 private:
  const std::string conninfo_;
  AnnotatedMutex mu_;
  std::vector<std::unique_ptr<RunStore>> idle_ FLOWREG_GUARDED_BY(mu_);
};

}  // namespace flowreg::detail
