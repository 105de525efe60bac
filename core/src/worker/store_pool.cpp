#include "worker/store_pool.hpp"

#include "metrics/metrics.hpp"

namespace flowreg::detail {

namespace {

class PgNotifications final : public TaskNotifications {
 public:
  explicit PgNotifications(Listener listener) : listener_(std::move(listener)) {}
  Result<std::optional<std::string>> wait(Millis timeout) override {
    auto n = listener_.wait(timeout);
    if (!n) return tl::unexpected(std::move(n.error()));
    if (!*n) return std::optional<std::string>();
    return std::optional<std::string>((*n)->payload);
  }

 private:
  Listener listener_;
};

}  // namespace

Result<std::unique_ptr<RunStore>> StorePool::check_out() {
  {
    MutexLock lock(mu_);
    while (idle_.empty() && open_ >= size_) cv_.wait(lock);
    if (!idle_.empty()) {
      auto store = std::move(idle_.back());
      idle_.pop_back();
      return store;
    }
    ++open_;  // reserve the slot while connecting, outside the lock
  }
  auto connected = RunStore::connect(conninfo_);
  if (!connected) {
    {
      MutexLock lock(mu_);
      --open_;
    }
    cv_.notify_one();
    Error error = std::move(connected.error());
    if (error.code == Errc::database) error.code = Errc::unavailable;  // could not connect
    return tl::unexpected(std::move(error));
  }
  return std::make_unique<RunStore>(std::move(*connected));
}

void StorePool::check_in(std::unique_ptr<RunStore> store) {
  {
    MutexLock lock(mu_);
    if (store->connection_lost()) {
      --open_;
      metrics::database_reconnects().inc();  // the next call opens a fresh one
    } else {
      idle_.push_back(std::move(store));
    }
  }
  store.reset();  // a lost connection is closed here, outside the lock
  cv_.notify_one();
}

Result<bool> StorePool::upsert_flow(const FlowDef& flow, std::string_view version) {
  return with([&](RunStore& s) { return s.upsert_flow(flow, version); });
}

Result<WorkResult> StorePool::work(std::string_view worker_id,
                                   std::span<const Completion> completions,
                                   std::span<const Failure> failures,
                                   std::span<const FlowKey> flows, int limit, Millis lease) {
  return with(
      [&](RunStore& s) { return s.work(worker_id, completions, failures, flows, limit, lease); });
}

Result<std::vector<TaskId>> StorePool::renew(std::string_view worker_id,
                                             std::span<const TaskAttempt> tasks, Millis lease) {
  return with([&](RunStore& s) { return s.renew(worker_id, tasks, lease, /*skip_locked=*/true); });
}

Result<std::vector<TaskId>> StorePool::release(std::string_view worker_id,
                                               std::span<const Release> tasks) {
  return with([&](RunStore& s) { return s.release(worker_id, tasks); });
}

Result<void> StorePool::heartbeat(const WorkerRecord& worker, bool stopped) {
  return with([&](RunStore& s) { return s.heartbeat(worker, stopped); });
}

Result<std::vector<CrashOutcome>> StorePool::report_crashes(std::span<const CrashReport> reports,
                                                            int limit) {
  return with([&](RunStore& s) { return s.report_crashes(reports, limit); });
}

Result<std::unique_ptr<TaskNotifications>> StorePool::listen() {
  auto listener = Listener::connect(conninfo_, {std::string(kTasksChannel)});
  if (!listener) return tl::unexpected(std::move(listener.error()));
  return std::unique_ptr<TaskNotifications>(
      std::make_unique<PgNotifications>(std::move(*listener)));
}

}  // namespace flowreg::detail
