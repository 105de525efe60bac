#pragma once
// `flowreg serve`'s HTTP server: the JSON API under /api/v1, Server-Sent Events of run and step
// changes, the web dashboard, /healthz, /readyz and /metrics. The transport (http_transport.hpp,
// Boost.Beast) reads whole requests, bounded, before any route runs; server.cpp holds the server's
// lifecycle and what surrounds every route (the token and the sign-in, the Host and Origin checks,
// the error replies, the access log and HTTP metrics); the routes are registered one group per
// resource (routes.hpp).
//
// Security: a token, when set, is required (Authorization: Bearer, compared in constant time, or
// the session cookie of a sign-in) by every mutating route and by /events, and by every read route
// unless `open_reads`; /healthz, /readyz, /signin, /logout and /static/ stay open. Without a token
// nothing is required: start() refuses to bind anything but a loopback address then. A Host that
// names another server (DNS rebinding) and a mutating request from another Origin get 403, with a
// token or without. The limits on requests are the transport's. No CORS header is ever sent.
//
// Thread-safety: start() and stop() from one thread; requests are served on the server's own
// threads. The registry and the plugin list callback must be safe for concurrent use and outlive
// the server.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "flowreg/config.hpp"
#include "flowreg/error.hpp"
#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"

namespace flowreg::detail {

// The cap on a request body: the limit of `run --input @FILE`.
inline constexpr std::size_t kMaxBodyBytes = std::size_t{64} << 20;

struct ServerOptions {
  ServerSettings settings;  // listen, token, open_reads, limits
  std::string conninfo;     // the run store's database (migrated)
  const FlowRegistry* registry = nullptr;
  std::function<std::vector<PluginInfo>()> plugins;  // the plugins directory's files, now
};

// A host and port parsed from "HOST:PORT" or "[V6]:PORT".
struct ListenAddress {
  std::string host;
  int port = 0;
  bool loopback = false;  // 127.0.0.0/8, ::1 or localhost
};
Result<ListenAddress> parse_listen(std::string_view text);

// The address and the token in effect (FLOWREG_TOKEN, else settings.token). Errc::invalid_argument
// for a bad address, a non-loopback address without a token, or a token under 16 characters.
struct ListenPlan {
  ListenAddress address;
  std::string token;
};
Result<ListenPlan> plan_listen(const ServerSettings& settings);

class HttpServer {
 public:
  // Binds and starts serving on threads of its own. Errc::invalid_argument for a bad address or a
  // non-loopback address without a token; Errc::io when the address cannot be bound.
  static Result<std::unique_ptr<HttpServer>> start(ServerOptions options);
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();  // stop()

  int port() const noexcept;  // the bound port (useful with port 0)
  const std::string& host() const noexcept;
  void stop();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flowreg::detail
