#include "server/server.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <thread>
#include <utility>

#include "app/forms.hpp"
#include "logging/json_log.hpp"
#include "metrics/metrics.hpp"
#include "server/http_helpers.hpp"
#include "server/http_transport.hpp"
#include "server/routes.hpp"
#include "server/sessions.hpp"
#include "server/signin_page.hpp"
#include "util/sha256.hpp"

namespace flowreg::detail {

namespace {

using http::problem;
using http::reason;
using http::Request;
using http::Response;

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  in_addr v4{};
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

bool is_ip_literal(const std::string& host) {
  in_addr v4{};
  in6_addr v6{};
  return inet_pton(AF_INET, host.c_str(), &v4) == 1 || inet_pton(AF_INET6, host.c_str(), &v6) == 1;
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
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

namespace {

// The server's own metrics: requests by route and status, their latency, connections and streams.
struct HttpMetrics {
  metrics::Family<metrics::Counter>& requests = metrics::default_registry().counter(
      "flowreg_http_requests_total", "HTTP requests answered by flowreg serve, by route and status",
      {"route", "status"});
  metrics::Family<metrics::Histogram>& seconds = metrics::default_registry().histogram(
      "flowreg_http_request_duration_seconds",
      "From a request's header read to its response written (a stream: to its end), by route",
      {"route"}, metrics::kLatencySecondsBuckets);
  metrics::Family<metrics::Gauge>& open = metrics::default_registry().gauge(
      "flowreg_http_open_connections", "Connections open to flowreg serve now", {});
  metrics::Family<metrics::Gauge>& streams = metrics::default_registry().gauge(
      "flowreg_http_event_streams", "Event streams (/api/v1/events) open now", {});
};

HttpMetrics& http_metrics() {
  static HttpMetrics* m = new HttpMetrics();  // never destroyed: scrapes may outlive a server
  return *m;
}

}  // namespace

struct HttpServer::Impl {
  ServerState state;  // what the routes share: the options, the stores, the event hub
  ListenAddress address;
  std::string token;
  std::vector<std::string> allowed_hosts;  // lowercased: the listen host and server.allowed_hosts
  http::Router router;
  std::unique_ptr<http::Transport> transport;
  std::shared_ptr<void> scrape_hook;  // refreshes the connection gauges
  SessionStore sessions;              // the dashboard's sign-ins (with a token)
  // The access log: the default logger's sinks (its format, text or JSON) at level info, whatever
  // --log-level says; server.access_log: false turns it off.
  std::shared_ptr<spdlog::logger> access = spdlog::default_logger()->clone("flowreg.http");

  Impl(ServerOptions o, ListenAddress a, std::string t)
      : state(std::move(o)),
        address(std::move(a)),
        token(std::move(t)),
        sessions(
            std::chrono::duration_cast<std::chrono::seconds>(state.options.settings.session_ttl)) {
    access->set_level(spdlog::level::info);
    allowed_hosts.push_back(lowercase(address.host));
    for (const auto& h : state.options.settings.allowed_hosts)
      allowed_hosts.push_back(lowercase(h));
  }

  // Who must show the token: nobody without one; with one, every route but the probes, except
  // read-only routes when open_reads.
  bool needs_token(const Request& req) const {
    if (token.empty()) return false;
    if (req.path == "/healthz" || req.path == "/readyz") return false;
    // Signing in, and what the sign-in page loads.
    if (req.path == "/signin" || req.path == "/logout" || req.path.starts_with("/static/"))
      return false;
    const bool reads = req.method == "GET" || req.method == "HEAD";
    const bool events = req.path == "/api/v1/events";
    return !reads || events || !state.options.settings.open_reads;
  }
  // Whether a Host header names this server: a loopback name, an IP address (no name to rebind),
  // the listen host or one of server.allowed_hosts. A request from a web page whose site's name
  // was rebound to this server's address (DNS rebinding) names that site instead.
  bool host_allowed(std::string_view header) const {
    if (header.empty()) return true;  // HTTP/1.0 without Host: not a browser
    std::string name = lowercase(host_of(header));
    if (name.ends_with('.')) name.pop_back();
    if (name == "localhost" || name.ends_with(".localhost") || is_ip_literal(name)) return true;
    return std::find(allowed_hosts.begin(), allowed_hosts.end(), name) != allowed_hosts.end();
  }
  // Why a request from a browser on another site must be refused, or "" when it need not be:
  // a Host that does not name this server (DNS rebinding), or a mutating request whose Origin is
  // not this server's own (cross-site request).
  std::string cross_site(const Request& req) const {
    const std::string host = req.get_header_value("Host");
    if (!host_allowed(host))
      return fmt::format(
          "Host '{}' does not name this server: it answers loopback names, IP addresses, its "
          "listen host and server.allowed_hosts (another name may have been rebound to this "
          "address)",
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
  // A whole request, on a handler thread: the checks around every route, then the route.
  std::string_view handle(Request& req, Response& res);
  void checks_and_route(Request& req, Response& res, http::Router::Match& match);
  void log_exchange(const http::Exchange& e) const;
};

// The table of contents: each group registers the routes of one resource (routes.hpp lists them),
// in the order they always had (no two patterns match the same path).
void HttpServer::Impl::routes() {
  register_service_routes(router, state);        // /healthz /readyz /metrics /static/ openapi.json
  register_flow_routes(router, state);           // /api/v1/flows
  register_run_routes(router, state);            // /api/v1/flows/{slug}/runs, /api/v1/runs
  register_run_detail_routes(router, state);     // /api/v1/runs/{id}/graph.svg, .../tasks
  register_worker_plugin_routes(router, state);  // /api/v1/workers, /api/v1/plugins
  register_schedule_routes(router, state);       // /api/v1/schedules
  register_event_routes(router, state);          // /api/v1/events
  register_page_routes(router, state);           // the dashboard: / /flows /runs /workers /plugins
  // Signing in to the dashboard with the token: a session cookie (sessions.hpp).
  router.Get(
      "/signin",
      [this](const Request& req, Response& res) {
        if (token.empty()) {  // nothing to sign in to
          res.status = 303;
          res.set_header("Location", "/");
          return;
        }
        signin::signin_get(req, res);
      },
      http::Work::quick);
  router.Post("/signin", [this](const Request& req, Response& res) {
    signin::signin_post(
        req, res, sessions,
        [this](std::string_view given) { return !token.empty() && same_secret(given, token); },
        req.tls);
  });
  router.Post("/logout", [this](const Request& req, Response& res) {
    signin::logout_post(req, res, sessions, req.tls);
  });
}

void HttpServer::Impl::checks_and_route(Request& req, Response& res, http::Router::Match& match) {
  // Content-Length headers that disagree leave the body's end ambiguous (RFC 9112, 6.3: the
  // ground of request smuggling).
  for (std::size_t i = 1; i < req.get_header_value_count("Content-Length"); ++i)
    if (req.get_header_value("Content-Length", i) != req.get_header_value("Content-Length"))
      return problem(res, 400, "the request has Content-Length headers that disagree");
  if (const std::string why = cross_site(req); !why.empty()) return problem(res, 403, why);
  if (needs_token(req) && !authorized(req) && !signin::signed_in(req, sessions)) {
    // A browser asking for a page signs in first, and comes back.
    const std::string accept = req.get_header_value("Accept");
    if ((req.method == "GET" || req.method == "HEAD") && !req.path.starts_with("/api/") &&
        accept.find("text/html") != std::string::npos && !req.has_header("Authorization")) {
      res.status = 303;
      res.set_header(
          "Location",
          "/signin?next=" + http::percent_encode(std::string_view(req.target).substr(0, 1024)));
      res.set_header("Cache-Control", "no-store");
      return;
    }
    res.set_header("WWW-Authenticate", "Bearer realm=\"flowreg\"");
    return problem(res, 401,
                   req.has_header("Authorization")
                       ? "the bearer token is wrong"
                       : "this route needs Authorization: Bearer TOKEN");
  }
  match = router.route(req);
  if (match.found == http::Router::Found::none)
    return problem(
        res, 404,
        fmt::format("no route {} {}", app::valid_text(req.method), app::valid_text(req.path)));
  if (match.found == http::Router::Found::wrong_method) {
    res.set_header("Allow", match.allow);
    return problem(res, 405,
                   fmt::format("{} does not take {} (it takes {})", app::valid_text(req.path),
                               app::valid_text(req.method), match.allow));
  }
  try {
    (*match.handler)(req, res);
  } catch (const std::exception& e) {
    spdlog::error("serve: {} {} failed: {}", app::valid_text(req.method), app::valid_text(req.path),
                  e.what());
    res = Response();
    problem(res, 500, e.what());
  }
}

std::string_view HttpServer::Impl::handle(Request& req, Response& res) {
  http::Router::Match match;
  try {
    checks_and_route(req, res, match);
  } catch (const std::exception& e) {  // writing the problem itself failed (out of memory)
    spdlog::error("serve: {} {} failed: {}", app::valid_text(req.method), app::valid_text(req.path),
                  e.what());
    res = Response();
    res.status = 500;
  }
  // Pages may load only this server's stylesheet, script and pictures; anything else loads
  // nothing.
  if (!res.has_header("Content-Security-Policy")) {
    const bool html = res.get_header_value("Content-Type").starts_with("text/html");
    res.set_header("Content-Security-Policy",
                   html ? "default-src 'self'; script-src 'self'; style-src 'self' "
                          "'unsafe-inline'; img-src 'self'; frame-ancestors 'none'"
                        : "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
  }
  return match.found == http::Router::Found::none ? std::string_view() : match.pattern;
}

// The access log (one line per exchange, JSON fields with --log-format json) and the metrics.
void HttpServer::Impl::log_exchange(const http::Exchange& e) const {
  auto& m = http_metrics();
  const std::string route = e.route.empty() ? std::string("unmatched") : std::string(e.route);
  const std::string status = std::to_string(e.status);
  m.requests.with({route, status}).inc();
  m.seconds.with({route}).observe(metrics::seconds(e.took));
  if (!state.options.settings.access_log) return;
  const double ms = std::chrono::duration<double, std::milli>(e.took).count();
  // The target as sent, cut: a log line stays short whatever a client sends.
  const std::string target = app::valid_text(e.target.substr(0, 512));
  if (logging::json_enabled()) {
    const std::string fields = app::json({{"method", app::valid_text(e.method.substr(0, 32))},
                                          {"target", target},
                                          {"route", route},
                                          {"status", e.status},
                                          {"bytes", e.bytes},
                                          {"ms", std::round(ms * 1000) / 1000},
                                          {"remote", std::string(e.remote)}})
                                   .dump();
    const logging::LogScope scope({{}, {}, {}, {}, fields});
    access->info("http {} {} {}", app::valid_text(e.method.substr(0, 32)), target, e.status);
    return;
  }
  access->info("http {} {} {} {}B {:.1f}ms {}", app::valid_text(e.method.substr(0, 32)), target,
               e.status, e.bytes, ms, e.remote);
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { stop(); }

Result<std::unique_ptr<HttpServer>> HttpServer::start(ServerOptions options) {
  auto plan = plan_listen(options.settings);
  if (!plan) return tl::unexpected(std::move(plan.error()));
  const ServerSettings s = options.settings;  // options moves into impl
  auto impl = std::make_unique<Impl>(std::move(options), plan->address, std::move(plan->token));
  impl->routes();
  Impl* self = impl.get();
  http::TransportOptions t;
  t.host = impl->address.host;
  t.port = impl->address.port;
  t.handler_threads = s.max_connections;
  t.max_open_connections = s.max_open_connections;
  t.timeout = s.timeout;
  t.max_body_bytes = kMaxBodyBytes;
  t.tls_cert = s.tls_cert.string();
  t.tls_key = s.tls_key.string();
  t.default_headers = {{"X-Content-Type-Options", "nosniff"},
                       {"X-Frame-Options", "DENY"},
                       // Not no-referrer: under it browsers send "Origin: null" on a form's or
                       // fetch()'s POST, which the cross-site check refuses.
                       {"Referrer-Policy", "same-origin"}};
  t.handle = [self](Request& req, Response& res) { return self->handle(req, res); };
  t.error = [](Response& res, int status, std::string_view detail) {
    problem(res, status, detail);
    if (status == 503) res.set_header("Retry-After", "1");
  };
  t.quick = [self](Request& req) { return self->router.route(req).quick; };
  t.on_exchange = [self](const http::Exchange& e) { self->log_exchange(e); };
  auto transport = http::Transport::start(std::move(t));
  if (!transport)
    return make_error(transport.error().code,
                      fmt::format("cannot listen on {}: {}", app::valid_text(s.listen),
                                  transport.error().message));
  impl->transport = std::move(*transport);
  impl->address.port = impl->transport->port();
  http::Transport* tr = impl->transport.get();
  impl->scrape_hook = metrics::default_registry().on_scrape([tr] {
    http_metrics().open.with({}).set(tr->open_connections());
    http_metrics().streams.with({}).set(tr->open_streams());
  });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const noexcept { return impl_->address.port; }
const std::string& HttpServer::host() const noexcept { return impl_->address.host; }

void HttpServer::stop() {
  if (!impl_ || !impl_->transport) return;
  impl_->scrape_hook.reset();
  impl_->state.hub.stop();  // ends the event streams
  impl_->transport->stop();
}

}  // namespace flowreg::detail
