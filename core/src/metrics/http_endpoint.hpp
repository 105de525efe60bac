#pragma once
// An HTTP server of one route, GET /metrics (exposition()), for `flowreg worker --metrics`.
// Anything else answers 404; request bodies are refused beyond 1 KiB; reads and writes time out
// after 5 s; two threads serve connections.
//
// Thread-safety: start() and the destructor from one thread; the server runs on its own threads.

#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "flowreg/error.hpp"

namespace flowreg::detail::metrics {

class HttpEndpoint {
 public:
  // Binds `address` ("HOST:PORT"; HOST an IPv4 address, a name, or [IPv6]; PORT 0 picks a free
  // port) and serves. Errc::invalid_argument for a malformed address, Errc::unavailable when it
  // cannot be bound.
  static Result<std::unique_ptr<HttpEndpoint>> start(std::string_view address);
  ~HttpEndpoint();  // stops serving
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // "HOST:PORT" as bound (the port chosen when 0 was asked).
  const std::string& address() const noexcept { return address_; }

 private:
  struct Server;
  HttpEndpoint() = default;
  std::unique_ptr<Server> server_;
  std::string address_;
  std::thread thread_;
};

}  // namespace flowreg::detail::metrics
