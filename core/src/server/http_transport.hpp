#pragma once
// `flowreg serve`'s HTTP/1.1 transport (Boost.Beast over Boost.Asio, optionally TLS): reads whole
// requests, bounded, on a few I/O threads that never block, and hands each complete request to a
// pool of handler threads. A connection therefore holds a thread only while its request's route
// runs: one that sends its request slowly, or nothing, holds a socket and a few KiB, never a
// thread (the thread-per-connection design before it could be frozen by 24 such connections).
//
// Limits, each answered before anything of the request reaches a route:
//   - the request line and header fields: max_header_bytes in all (431 beyond, whatever their
//     number);
//   - the body: max_body_bytes, with Content-Length or chunked alike (413), and body_budget for
//     the bodies of every request being read or handled at once (503 beyond);
//   - the whole request, from the moment the connection waits for it (accepted, or the previous
//     response written) to its last byte: `timeout` (the connection is closed);
//   - writing a response, and each piece of a stream: `timeout`;
//   - connections open at once: max_open_connections (more are answered 503 and closed);
//   - requests handled at once: handler_threads, and as many queued (503 beyond);
//   - streams open at once: max_streams (the route refuses more itself, see api_events.cpp); each
//     runs on a thread of its own, ended within about a second of its client going away.
// Malformed requests get 400, and every error closes the connection.
//
// Thread-safety: start() and stop() from one thread. `handle` and `on_exchange` run on handler,
// stream and I/O threads, concurrently.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/options.hpp"
#include "server/http_message.hpp"

namespace flowreg::detail::http {

// One request and its answer, reported once the response is written (or the connection failed).
struct Exchange {
  std::string_view method, target, route;  // route: the matched pattern, "" when none
  std::string_view remote;
  int status = 0;
  std::size_t bytes = 0;  // the response's body bytes written (a stream: all its pieces)
  std::chrono::steady_clock::duration took{};  // from the request's header to the response sent
};

struct TransportOptions {
  std::string host;  // an address (a name is resolved once)
  int port = 0;      // 0: any free port
  int handler_threads = 16;
  int max_open_connections = 512;
  Millis timeout{10'000};
  std::size_t max_header_bytes = 32 << 10;
  std::size_t max_body_bytes = 64 << 20;
  std::size_t body_budget = 256 << 20;
  std::string tls_cert, tls_key;  // PEM files: both, or neither (plain HTTP)
  // Headers every response carries unless the route set them.
  std::vector<std::pair<std::string, std::string>> default_headers;

  // Runs a complete request on a handler thread (or a stream's thread for nothing). Returns the
  // matched route's pattern ("" when none), for on_exchange. Must not throw.
  std::function<std::string_view(Request&, Response&)> handle;
  // Whether `handle` may run on the I/O thread that read the request (it is quick); else it runs
  // on a handler thread. Unset: never.
  std::function<bool(Request&)> quick;
  // Fills a response for an error of the transport itself (status, and why).
  std::function<void(Response&, int status, std::string_view detail)> error;
  // Each exchange, once done (access log, metrics).
  std::function<void(const Exchange&)> on_exchange;
};

class Transport {
 public:
  // Binds and starts its threads. Errc::io when the address cannot be bound or the TLS files
  // cannot be read.
  static Result<std::unique_ptr<Transport>> start(TransportOptions options);
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;
  ~Transport();  // stop()

  int port() const noexcept;
  // Connections open now; streams running now.
  int open_connections() const noexcept;
  int open_streams() const noexcept;

  // Stops accepting, waits for the routes and streams running (streams end when their Stream
  // does: stop what feeds them first), and closes every connection.
  void stop();

  struct Impl;

 private:
  explicit Transport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flowreg::detail::http
