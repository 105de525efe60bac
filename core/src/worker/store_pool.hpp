#pragma once
// A few RunStore connections shared by a worker's lanes: a round trip holds one only for the
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
#include "flowreg/thread_annotations.hpp"
#include "store/run_store.hpp"
#include "worker/worker_store.hpp"

namespace flowreg::detail {

// The WorkerStore of a worker in production: each call runs on a pooled connection.
class StorePool final : public WorkerStore {
 public:
  StorePool(std::string conninfo, int size)
      : conninfo_(std::move(conninfo)), size_(size < 1 ? 1 : size) {}
  StorePool(const StorePool&) = delete;
  StorePool& operator=(const StorePool&) = delete;

  Result<bool> upsert_flow(const FlowDef& flow, std::string_view version) override;
  Result<WorkResult> work(std::string_view worker_id, std::span<const Completion> completions,
                          std::span<const Failure> failures, std::span<const FlowKey> flows,
                          int limit, Millis lease) override;
  Result<std::vector<TaskId>> renew(std::string_view worker_id, std::span<const TaskAttempt> tasks,
                                    Millis lease) override;
  Result<std::vector<TaskId>> release(std::string_view worker_id,
                                      std::span<const Release> tasks) override;
  Result<void> heartbeat(const WorkerRecord& worker, bool stopped) override;
  Result<std::vector<CrashOutcome>> report_crashes(std::span<const CrashReport> reports,
                                                   int limit) override;
  Result<std::unique_ptr<TaskNotifications>> listen() override;

 private:
  // Runs fn(RunStore&) on a pooled connection (waiting for one when all `size` are busy) and
  // returns what it returns. fn returns a Result; when no connection can be opened, that error
  // (Errc::unavailable when the server cannot be reached) is returned without calling fn.
  template <class F>
  auto with(F&& fn) -> decltype(fn(std::declval<RunStore&>())) {
    auto store = check_out();
    if (!store) return tl::unexpected(std::move(store.error()));
    auto result = fn(**store);
    check_in(std::move(*store));
    return result;
  }

  Result<std::unique_ptr<RunStore>> check_out();
  void check_in(std::unique_ptr<RunStore> store);

  const std::string conninfo_;
  const int size_;
  AnnotatedMutex mu_;
  std::condition_variable_any cv_;
  std::vector<std::unique_ptr<RunStore>> idle_ FLOWREG_GUARDED_BY(mu_);
  int open_ FLOWREG_GUARDED_BY(mu_) = 0;  // idle + in use
};

}  // namespace flowreg::detail
