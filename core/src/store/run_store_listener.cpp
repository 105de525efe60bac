// Listener: a connection LISTENing on the run store's channels.
#include <deque>
#include <pqxx/pqxx>

#include "store/conninfo.hpp"
#include "store/run_store.hpp"
#include "store/run_store_detail.hpp"

namespace flowreg::detail {

namespace {

class QueueingReceiver final : public pqxx::notification_receiver {
 public:
  QueueingReceiver(pqxx::connection_base& conn, const std::string& channel,
                   std::deque<Notification>& queue)
      : pqxx::notification_receiver(conn, channel), queue_(queue) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    queue_.push_back(Notification{channel(), payload});
  }

 private:
  std::deque<Notification>& queue_;
};

}  // namespace

struct Listener::Impl {
  explicit Impl(const std::string& conninfo) : conn(with_connection_defaults(conninfo)) {}
  std::deque<Notification> queue;
  pqxx::connection conn;
  bool lost = false;
  std::vector<std::unique_ptr<QueueingReceiver>> receivers;  // destroyed before conn
};

Listener::Listener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

Result<Listener> Listener::connect(const std::string& conninfo, std::vector<std::string> channels) {
  return guarded("listening for run store notifications", [&]() -> Result<Listener> {
    auto impl = std::make_unique<Impl>(conninfo);
    for (const auto& channel : channels)
      impl->receivers.push_back(
          std::make_unique<QueueingReceiver>(impl->conn, channel, impl->queue));
    impl->conn.get_notifs();  // sends the LISTENs now, so nothing after connect() is missed
    return Listener(std::move(impl));
  });
}

bool Listener::connection_lost() const noexcept { return impl_ == nullptr || impl_->lost; }

Result<std::optional<Notification>> Listener::wait(Millis timeout) {
  auto result = wait_for(timeout);
  if (!result && !impl_->conn.is_open()) impl_->lost = true;
  return result;
}

Result<std::optional<Notification>> Listener::wait_for(Millis timeout) {
  return guarded("waiting for a notification", [&]() -> Result<std::optional<Notification>> {
    auto& q = impl_->queue;
    if (q.empty()) impl_->conn.get_notifs();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (q.empty()) {
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      impl_->conn.await_notification(static_cast<long>(left.count() / 1'000'000),
                                     static_cast<long>(left.count() % 1'000'000));
    }
    if (q.empty()) return std::optional<Notification>{};
    Notification n = std::move(q.front());
    q.pop_front();
    return std::optional<Notification>(std::move(n));
  });
}

}  // namespace flowreg::detail
