#include "server/server.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <thread>
#include <utility>

#include "app/forms.hpp"
#include "server/http_helpers.hpp"
#include "server/routes.hpp"
#include "util/sha256.hpp"

namespace flowreg::detail {

namespace {

using http::problem;
using http::reason;
using http::Request;
using http::Response;

// httplib's task queue with a bound: at most `threads` connections are served at once and as many
// wait; beyond that the accepting thread blocks, and new connections wait in the kernel's backlog.
class BoundedPool final : public httplib::TaskQueue {
 public:
  explicit BoundedPool(std::size_t threads) : max_queued_(threads) {
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      MutexLock lock(mu_);
      while (!shutdown_ && jobs_.size() >= max_queued_) space_.wait(lock);
      jobs_.push_back(std::move(fn));
    }
    ready_.notify_one();
  }
  void shutdown() override {
    {
      MutexLock lock(mu_);
      shutdown_ = true;
    }
    ready_.notify_all();
    space_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> fn;
      {
        MutexLock lock(mu_);
        while (!shutdown_ && jobs_.empty()) ready_.wait(lock);
        if (jobs_.empty()) return;
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      space_.notify_one();
      fn();
    }
  }

  const std::size_t max_queued_;
  AnnotatedMutex mu_;
  std::condition_variable_any ready_, space_;
  std::deque<std::function<void()>> jobs_ FLOWREG_GUARDED_BY(mu_);
  bool shutdown_ FLOWREG_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr v4{};
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

// The host part of a Host header ("name:port", "[v6]:port" or "name").
std::string host_of(std::string_view header) {
  if (header.starts_with('[')) {
    const auto close = header.find(']');
    return std::string(header.substr(1, close == std::string_view::npos ? 0 : close - 1));
  }
  return std::string(header.substr(0, header.find(':')));
}

// Equal strings, in time that depends only on their lengths' digests: both are hashed first.
bool same_secret(std::string_view a, std::string_view b) {
  const std::string da = sha256_hex(a), db = sha256_hex(b);
  return CRYPTO_memcmp(da.data(), db.data(), da.size()) == 0;
}

}  // namespace

Result<ListenAddress> parse_listen(std::string_view text) {
  ListenAddress out;
  std::string_view host, port;
  if (text.starts_with('[')) {
    const auto close = text.find("]:");
    if (close == std::string_view::npos)
      return make_error(
          Errc::invalid_argument,
          fmt::format("listen address '{}': expected [V6]:PORT", app::valid_text(text)));
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0)
      return make_error(
          Errc::invalid_argument,
          fmt::format("listen address '{}': expected HOST:PORT", app::valid_text(text)));
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), out.port);
  if (ec != std::errc() || end != port.data() + port.size() || out.port < 0 || out.port > 65535)
    return make_error(Errc::invalid_argument,
                      fmt::format("listen address '{}': the port is not a number from 0 to 65535",
                                  app::valid_text(text)));
  out.host = std::string(host);
  out.loopback = is_loopback(out.host);
  return out;
}

Result<ListenPlan> plan_listen(const ServerSettings& settings) {
  auto address = parse_listen(settings.listen);
  if (!address) return tl::unexpected(std::move(address.error()));
  std::string token = settings.token;
  if (const char* env = std::getenv("FLOWREG_TOKEN"); env && *env) token = env;
  if (!address->loopback && token.empty())
    return make_error(Errc::invalid_argument,
                      fmt::format("listening on {} (not a loopback address) requires a token: set "
                                  "server.token or FLOWREG_TOKEN",
                                  app::valid_text(settings.listen)));
  if (!token.empty() && token.size() < 16)
    return make_error(Errc::invalid_argument, "the token is shorter than 16 characters");
  return ListenPlan{std::move(*address), std::move(token)};
}

struct HttpServer::Impl {
  ServerState state;  // what the routes share: the options, the stores, the event hub
  ListenAddress address;
  std::string token;
  httplib::Server http;
  std::atomic<bool> ended{false};  // listen_after_bind returned
  std::thread thread;

  Impl(ServerOptions o, ListenAddress a, std::string t)
      : state(std::move(o)), address(std::move(a)), token(std::move(t)) {}

  // Who must show the token: nobody without one; with one, every route but the probes, except
  // read-only routes when open_reads.
  bool needs_token(const Request& req) const {
    if (token.empty()) return false;
    if (req.path == "/healthz" || req.path == "/readyz") return false;
    const bool reads = req.method == "GET" || req.method == "HEAD";
    const bool events = req.path == "/api/v1/events";
    return !reads || events || !state.options.settings.open_reads;
  }
  // Why a request from a browser on another site must be refused, or "" when it need not be.
  // Without a token, the server trusts whoever reaches its loopback address, which includes any
  // web page the user opens: a Host that is not a loopback name means the name was rebound to
  // 127.0.0.1 by another site (DNS rebinding), and a mutating request whose Origin is not this
  // server's own comes from another site's page (cross-site request).
  std::string cross_site(const Request& req) const {
    const std::string host = req.get_header_value("Host");
    if (token.empty() && address.loopback && !host.empty() && !is_loopback(host_of(host)))
      return fmt::format(
          "Host '{}' is not a loopback name: without a token this server answers "
          "only requests for its loopback address",
          app::valid_text(host));
    const bool reads = req.method == "GET" || req.method == "HEAD";
    if (reads || !req.has_header("Origin")) return {};
    const std::string origin = req.get_header_value("Origin");
    if (origin == "http://" + host || origin == "https://" + host) return {};
    return fmt::format("Origin '{}' is not this server ({}): cross-site requests are refused",
                       app::valid_text(origin), app::valid_text(host));
  }
  // "Bearer TOKEN": the scheme in any case, then one or more spaces (RFC 9110, 11.1 and 11.4).
  bool authorized(const Request& req) const {
    const std::string header = req.get_header_value("Authorization");
    constexpr std::string_view kScheme = "bearer";
    if (header.size() <= kScheme.size() || header[kScheme.size()] != ' ') return false;
    for (std::size_t i = 0; i < kScheme.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) return false;
    const std::size_t credentials = header.find_first_not_of(' ', kScheme.size());
    if (credentials == std::string::npos) return false;
    return same_secret(std::string_view(header).substr(credentials), token);
  }

  void routes();
};

// The table of contents: each group registers the routes of one resource (routes.hpp lists them),
// in the order they always had (no two patterns match the same path).
void HttpServer::Impl::routes() {
  register_service_routes(http, state);        // /healthz /readyz /metrics /static/ openapi.json
  register_flow_routes(http, state);           // /api/v1/flows
  register_run_routes(http, state);            // /api/v1/flows/{slug}/runs, /api/v1/runs
  register_worker_plugin_routes(http, state);  // /api/v1/workers, /api/v1/plugins
  register_event_routes(http, state);          // /api/v1/events
  register_page_routes(http, state);           // the dashboard: / /flows /runs /workers /plugins
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { stop(); }

Result<std::unique_ptr<HttpServer>> HttpServer::start(ServerOptions options) {
  auto plan = plan_listen(options.settings);
  if (!plan) return tl::unexpected(std::move(plan.error()));
  const ServerSettings s = options.settings;  // options moves into impl
  auto impl = std::make_unique<Impl>(std::move(options), plan->address, std::move(plan->token));
  auto& http = impl->http;
  const std::size_t threads = static_cast<std::size_t>(s.max_connections + s.max_event_streams);
  http.new_task_queue = [threads] { return new BoundedPool(threads); };
  http.set_payload_max_length(kMaxBodyBytes);
  // A response is written in pieces (headers, body): without it, Nagle's algorithm holds the last
  // one until the client's delayed ACK (40 ms per request).
  http.set_tcp_nodelay(true);
  const auto timeout = std::chrono::milliseconds(s.timeout);
  http.set_read_timeout(timeout);
  http.set_write_timeout(timeout);
  http.set_keep_alive_timeout(std::max<time_t>(1, static_cast<time_t>(s.timeout.count() / 1000)));
  http.set_keep_alive_max_count(100);
  http.set_default_headers({{"X-Content-Type-Options", "nosniff"},
                            {"X-Frame-Options", "DENY"},
                            {"Referrer-Policy", "no-referrer"}});
  // Pages may load only this server's stylesheet, script and pictures; anything else loads nothing.
  http.set_post_routing_handler([](const Request&, Response& res) {
    if (res.has_header("Content-Security-Policy")) return;
    const bool html = res.get_header_value("Content-Type").starts_with("text/html");
    res.set_header("Content-Security-Policy",
                   html ? "default-src 'self'; script-src 'self'; style-src 'self' "
                          "'unsafe-inline'; img-src 'self'; frame-ancestors 'none'"
                        : "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
  });
  Impl* self = impl.get();
  http.set_pre_routing_handler([self](const Request& req, Response& res) {
    // Content-Length headers that disagree leave the body's end ambiguous (RFC 9112, 6.3: the
    // ground of request smuggling); cpp-httplib would read the first.
    for (std::size_t i = 1; i < req.get_header_value_count("Content-Length"); ++i) {
      if (req.get_header_value("Content-Length", i) != req.get_header_value("Content-Length")) {
        problem(res, 400, "the request has Content-Length headers that disagree");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (const std::string why = self->cross_site(req); !why.empty()) {
      problem(res, 403, why);
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!self->needs_token(req) || self->authorized(req))
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer realm=\"flowreg\"");
    problem(res, 401,
            req.has_header("Authorization") ? "the bearer token is wrong"
                                            : "this route needs Authorization: Bearer TOKEN");
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_error_handler([](const Request& req, Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413)
      return problem(res, 413,
                     fmt::format("the request body is larger than {} bytes (the limit of "
                                 "run --input)",
                                 kMaxBodyBytes));
    if (res.status == 404)
      return problem(res, 404,
                     fmt::format("no route {} {}", req.method, app::valid_text(req.path)));
    problem(res, res.status, reason(res.status));
  });
  http.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    spdlog::error("serve: a request failed: {}", what);
    problem(res, 500, what);
  });
  impl->routes();
  int port = impl->address.port;
  if (port == 0) {
    port = http.bind_to_any_port(impl->address.host);
    if (port < 0)
      return make_error(Errc::io, fmt::format("cannot listen on {}", app::valid_text(s.listen)));
  } else if (!http.bind_to_port(impl->address.host, port)) {
    return make_error(Errc::io, fmt::format("cannot listen on {} (in use, or not an address of "
                                            "this machine)",
                                            app::valid_text(s.listen)));
  }
  impl->address.port = port;
  impl->thread = std::thread([self] {
    self->http.listen_after_bind();
    self->ended = true;
  });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const noexcept { return impl_->address.port; }
const std::string& HttpServer::host() const noexcept { return impl_->address.host; }

void HttpServer::stop() {
  if (!impl_) return;
  impl_->state.hub.stop();
  // httplib's stop() does nothing before the server runs: wait until it does (or gave up).
  while (impl_->thread.joinable() && !impl_->ended) {
    if (impl_->http.is_running()) {
      impl_->http.stop();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace flowreg::detail
