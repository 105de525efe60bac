#pragma once
// The database round trips a worker makes, as an interface: the engine and the lanes are
// given one (StorePool in production, a fake in unit tests) and never open a connection
// themselves. Each call is RunStore's of the same name (store/run_store.hpp), on some connection;
// Errc::unavailable when the database cannot be reached (the callers retry with backoff).
//
// Thread-safety: implementations accept concurrent calls.

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

// "slug@version": how a flow version is named in logs, supervisor children and messages.
inline std::string label(const FlowKey& key) { return key.slug + "@" + key.version; }

// Notifications that tasks became ready (payload: the flow slug). One thread uses it.
class TaskNotifications {
 public:
  virtual ~TaskNotifications() = default;
  // The next notification's payload, waiting up to `timeout`; nullopt on timeout; an error when
  // the connection broke (notifications may have been missed: listen() again).
  virtual Result<std::optional<std::string>> wait(Millis timeout) = 0;
};

class WorkerStore {
 public:
  virtual ~WorkerStore() = default;
  virtual Result<bool> upsert_flow(const FlowDef& flow, std::string_view version) = 0;
  // Records results and claims up to `limit` tasks of `flows`, in one transaction.
  virtual Result<WorkResult> work(std::string_view worker_id,
                                  std::span<const Completion> completions,
                                  std::span<const Failure> failures, std::span<const FlowKey> flows,
                                  int limit, Millis lease) = 0;
  // Renews leases, skipping rows being written (their results are being recorded); the ids
  // rejected (the lease was lost).
  virtual Result<std::vector<TaskId>> renew(std::string_view worker_id,
                                            std::span<const TaskAttempt> tasks, Millis lease) = 0;
  virtual Result<std::vector<TaskId>> release(std::string_view worker_id,
                                              std::span<const Release> tasks) = 0;
  virtual Result<void> heartbeat(const WorkerRecord& worker, bool stopped) = 0;
  virtual Result<std::vector<CrashOutcome>> report_crashes(std::span<const CrashReport> reports,
                                                           int limit) = 0;
  // Starts listening for kTasksChannel.
  virtual Result<std::unique_ptr<TaskNotifications>> listen() = 0;
};

}  // namespace flowreg::detail
