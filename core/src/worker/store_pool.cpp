#include "worker/store_pool.hpp"

namespace flowreg::detail {

Result<std::unique_ptr<RunStore>> StorePool::acquire() {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !idle_.empty() || open_ < size_; });
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
      std::lock_guard lock(mu_);
      --open_;
    }
    cv_.notify_one();
    Error error = std::move(connected.error());
    if (error.code == Errc::database) error.code = Errc::unavailable;  // could not connect
    return tl::unexpected(std::move(error));
  }
  return std::make_unique<RunStore>(std::move(*connected));
}

void StorePool::release(std::unique_ptr<RunStore> store) {
  {
    std::lock_guard lock(mu_);
    if (store->connection_lost()) {
      --open_;
    } else {
      idle_.push_back(std::move(store));
    }
  }
  store.reset();  // a lost connection is closed here, outside the lock
  cv_.notify_one();
}

}  // namespace flowreg::detail
