#include "server/server.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "app/forms.hpp"
#include "app/graph_svg.hpp"
#include "app/runs.hpp"
#include "metrics/metrics.hpp"
#include "server/assets.hpp"
#include "server/dashboard.hpp"
#include "server/event_hub.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "util/json_text.hpp"
#include "util/sha256.hpp"

namespace flowreg::detail {

namespace {

using app::json;
using httplib::Request;
using httplib::Response;

constexpr const char* kJson = "application/json";
constexpr const char* kProblemJson = "application/problem+json";
constexpr const char* kHtml = "text/html; charset=utf-8";
constexpr int kMaxListLimit = 1000;

// RunStore connections for the request threads: one per call, opened on demand, a broken one
// dropped instead of returned.
class Stores {
 public:
  explicit Stores(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  Stores(const Stores&) = delete;
  Stores& operator=(const Stores&) = delete;

  template <class F>
  auto with(F&& fn) -> decltype(fn(std::declval<RunStore&>())) {
    std::unique_ptr<RunStore> store;
    {
      MutexLock lock(mu_);
      if (!idle_.empty()) {
        store = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (!store) {
      auto fresh = RunStore::connect(conninfo_);
      if (!fresh) return tl::unexpected(std::move(fresh.error()));
      store = std::make_unique<RunStore>(std::move(*fresh));
    }
    auto result = fn(*store);
    if (!store->connection_lost()) {
      MutexLock lock(mu_);
      idle_.push_back(std::move(store));
    }
    return result;
  }

 private:
  const std::string conninfo_;
  AnnotatedMutex mu_;
  std::vector<std::unique_ptr<RunStore>> idle_ FLOWREG_GUARDED_BY(mu_);
};

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

std::string_view reason(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Content";
    case 503:
      return "Service Unavailable";
    default:
      return status >= 500 ? "Internal Server Error" : "Error";
  }
}

// An RFC 9457 problem: type about:blank, the status's title, the CLI's message as detail, and
// each problem of a validation in "errors".
void problem(Response& res, int status, std::string_view detail,
             const std::vector<Diagnostic>& details = {}) {
  json body = {{"type", "about:blank"},
               {"title", reason(status)},
               {"status", status},
               {"detail", app::valid_text(detail)}};
  if (!details.empty()) {
    json errors = json::array();
    for (const auto& d : details) errors.push_back(app::valid_text(d.format()));
    body["errors"] = std::move(errors);
  }
  res.status = status;
  res.set_content(json_text(body), kProblemJson);
}

// The status an Error of the store or the catalogue means over HTTP.
int status_of(const Error& e) {
  switch (e.code) {
    case Errc::not_found:
      return 404;
    case Errc::invalid_argument:
      return 409;
    case Errc::parse:
      return 400;
    case Errc::unavailable:
      return 503;
    default:
      return 500;
  }
}

void send_error(Response& res, const Error& e) { problem(res, status_of(e), e.message, e.details); }

void send_json(Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(json_text(body), kJson);
}

bool is_uuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

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
  ServerOptions options;
  ListenAddress address;
  std::string token;
  httplib::Server http;
  Stores stores;
  EventHub hub;
  std::atomic<int> streams{0};
  std::atomic<bool> ended{false};  // listen_after_bind returned
  std::thread thread;
  std::mutex svg_mu;
  std::map<std::string, std::string> svg_cache;  // "slug@version" -> SVG (guarded by svg_mu)

  Impl(ServerOptions o, ListenAddress a, std::string t)
      : options(std::move(o)),
        address(std::move(a)),
        token(std::move(t)),
        stores(options.conninfo),
        hub(options.conninfo) {}

  // Who must show the token: nobody without one; with one, every route but the probes, except
  // read-only routes when open_reads.
  bool needs_token(const Request& req) const {
    if (token.empty()) return false;
    if (req.path == "/healthz" || req.path == "/readyz") return false;
    const bool reads = req.method == "GET" || req.method == "HEAD";
    const bool events = req.path == "/api/v1/events";
    return !reads || events || !options.settings.open_reads;
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
  bool authorized(const Request& req) const {
    const std::string header = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (!header.starts_with(kBearer)) return false;
    return same_secret(std::string_view(header).substr(kBearer.size()), token);
  }

  // The registry's flows as the API shows them.
  json flows_json() const {
    json out = json::array();
    for (const auto& f : options.registry->list()) out.push_back(app::flow_json(*f));
    return out;
  }

  void routes();
  void post_run(const Request& req, Response& res);
  void list_runs(const Request& req, Response& res, bool html);
  void events(const Request& req, Response& res);
  Result<json> run_with_steps(const std::string& id);
};

Result<json> HttpServer::Impl::run_with_steps(const std::string& id) {
  return stores.with([&](RunStore& store) -> Result<json> {
    auto info = store.get_run(id);
    if (!info) return tl::unexpected(std::move(info.error()));
    if (!*info) return make_error(Errc::not_found, fmt::format("no run {}", id));
    auto steps = store.run_steps(id);
    if (!steps) return tl::unexpected(std::move(steps.error()));
    json out = app::run_json(**info);
    out["steps"] = json::array();
    for (const auto& s : *steps) out["steps"].push_back(app::step_json(s));
    return out;
  });
}

void HttpServer::Impl::post_run(const Request& req, Response& res) {
  const std::string slug = req.matches[1];
  const FlowRef flow = options.registry->get(slug);
  if (!flow) return problem(res, 404, fmt::format("no flow with slug '{}'", app::valid_text(slug)));
  const std::string type = req.get_header_value("Content-Type");
  if (!req.body.empty() && !type.empty() && !type.starts_with("application/json"))
    return problem(
        res, 415,
        fmt::format("the input must be application/json, not '{}'", app::valid_text(type)));
  auto input = app::check_input(req.body.empty() ? std::string_view("{}") : req.body, flow->def,
                                "the input");
  if (!input) {
    // Malformed JSON: 400; valid JSON the flow's input schema refuses: 422.
    const int status = input.error().code == Errc::parse ? 400 : 422;
    return problem(res, status, input.error().message, input.error().details);
  }
  StartOptions start;
  auto key = app::check_idempotency_key(req.get_header_value("Idempotency-Key"));
  if (!key) return problem(res, 400, "Idempotency-Key is longer than 255 bytes");
  start.idempotency_key = std::move(*key);
  auto run =
      stores.with([&](RunStore& store) { return app::start_run(store, *flow, *input, start); });
  if (!run) {
    // A key used again with another input: the store refuses it (invalid_argument).
    return send_error(res, run.error());
  }
  res.set_header("Location", "/api/v1/runs/" + run->id);
  send_json(res, app::run_json(*run), 201);
}

void HttpServer::Impl::list_runs(const Request& req, Response& res, bool html) {
  RunFilter filter;
  std::optional<RunId> before;
  json given = {{"flow", ""}, {"status", ""}};
  const auto fail = [&](int status, std::string message) {
    if (html) {
      res.status = status;
      res.set_content(dashboard::error_page(status, reason(status), message), kHtml);
    } else {
      problem(res, status, message);
    }
  };
  if (req.has_param("flow") && !req.get_param_value("flow").empty()) {
    filter.flow_slug = app::valid_text(req.get_param_value("flow"));
    given["flow"] = *filter.flow_slug;
  }
  if (req.has_param("status") && !req.get_param_value("status").empty()) {
    const std::string s = req.get_param_value("status");
    filter.status = parse_run_status(s);
    if (!filter.status)
      return fail(400,
                  fmt::format("status '{}' is not one of started, completed, failed, cancelled",
                              app::valid_text(s)));
    given["status"] = s;
  }
  filter.limit = html ? 50 : 100;
  if (req.has_param("limit")) {
    const std::string l = req.get_param_value("limit");
    int n = 0;
    const auto [end, ec] = std::from_chars(l.data(), l.data() + l.size(), n);
    if (ec != std::errc() || end != l.data() + l.size() || n < 1 || n > kMaxListLimit)
      return fail(400, fmt::format("limit '{}' is not a number from 1 to {}", app::valid_text(l),
                                   kMaxListLimit));
    filter.limit = n;
  }
  if (req.has_param("before") && !req.get_param_value("before").empty()) {
    const std::string b = req.get_param_value("before");
    if (!is_uuid(b))
      return fail(400, fmt::format("before '{}' is not a run id", app::valid_text(b)));
    before = b;
  }
  // One more than asked: whether there is a next page.
  const int asked = filter.limit;
  filter.limit = asked + 1;
  auto runs = stores.with([&](RunStore& store) { return store.list_runs(filter, before); });
  if (!runs) {
    if (html) return fail(status_of(runs.error()), runs.error().message);
    return send_error(res, runs.error());
  }
  const bool more = static_cast<int>(runs->size()) > asked;
  if (more) runs->resize(static_cast<std::size_t>(asked));
  json list = json::array();
  for (const auto& r : *runs) list.push_back(app::run_json(r));
  const std::string next = more ? runs->back().id : std::string();
  if (html) {
    res.set_content(dashboard::runs_page(list, flows_json(), given, next), kHtml);
    return;
  }
  send_json(res, {{"runs", std::move(list)}, {"next_before", more ? json(next) : json(nullptr)}});
}

void HttpServer::Impl::events(const Request& req, Response& res) {
  if (streams.fetch_add(1) >= options.settings.max_event_streams) {
    streams.fetch_sub(1);
    return problem(res, 503,
                   fmt::format("too many event streams open (at most {}, server.max_event_streams)",
                               options.settings.max_event_streams));
  }
  const std::string run = req.get_param_value("run"), flow = req.get_param_value("flow");
  std::string last = req.get_header_value("Last-Event-ID");
  if (last.empty()) last = req.get_param_value("last_event_id");
  auto [after, resumed] = hub.resume_point(last);
  const bool reset = !last.empty() && !resumed;
  auto cursor = std::make_shared<std::uint64_t>(after);
  auto first = std::make_shared<bool>(true);
  auto quiet = std::make_shared<int>(0);  // seconds without a write
  res.set_header("Cache-Control", "no-store");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, run, flow, cursor, first, quiet, reset](std::size_t, httplib::DataSink& sink) {
        std::string out;
        if (*first) {
          *first = false;
          out = "retry: 2000\n";
          if (reset)
            out +=
                "event: reset\ndata: {\"reason\":\"the events since Last-Event-ID cannot be "
                "resumed: reload the state\"}\n";
          out += "\n";
        }
        auto events = hub.wait_after(*cursor, Millis{1000});
        if (!events) {
          sink.done();
          return true;
        }
        // Events this stream had not sent yet left the hub's history while it was behind.
        if (!events->empty() && events->front().seq > *cursor + 1)
          out +=
              "event: reset\ndata: {\"reason\":\"events were dropped while this stream was "
              "behind: reload the state\"}\n\n";
        for (const auto& e : *events) {
          *cursor = e.seq;
          if ((!run.empty() && e.run_id != run) || (!flow.empty() && e.flow != flow)) continue;
          out +=
              fmt::format("id: {}:{}\nevent: {}\ndata: {}\n\n", hub.epoch(), e.seq, e.type, e.data);
        }
        if (out.empty()) {
          // Every 15 s of silence a comment: keeps proxies and the client's timers alive, and
          // finds a client that went away.
          if (++*quiet < 15) return true;
          out = ":\n\n";
        }
        *quiet = 0;
        return sink.write(out.data(), out.size());
      },
      [this](bool) { streams.fetch_sub(1); });
}

void HttpServer::Impl::routes() {
  auto& h = http;
  const auto html_error = [](Response& res, int status, std::string_view detail) {
    res.status = status;
    res.set_content(dashboard::error_page(status, reason(status), detail), kHtml);
  };

  h.Get("/healthz", [](const Request&, Response& res) { send_json(res, {{"status", "ok"}}); });
  h.Get("/readyz", [this](const Request&, Response& res) {
    auto migrations = migration_status(options.conninfo);
    auto functions = migrations
                         ? function_status(options.conninfo)
                         : Result<std::vector<FunctionStatus>>(tl::unexpected(migrations.error()));
    if (!functions) return problem(res, 503, functions.error().message);
    std::vector<Diagnostic> behind;
    for (const auto& m : *migrations)
      if (m.state != MigrationState::applied)
        behind.push_back(
            {{}, fmt::format("migration {} {}: {}", m.version, m.name, to_string(m.state))});
    for (const auto& f : *functions)
      if (f.state != FunctionState::applied && f.state != FunctionState::unknown)
        behind.push_back({{}, fmt::format("function {}: {}", f.name, to_string(f.state))});
    if (!behind.empty()) return problem(res, 503, "the database's schema is not current", behind);
    send_json(res, {{"status", "ready"}, {"database", "reachable"}, {"migrations", "current"}});
  });
  h.Get("/metrics", [](const Request&, Response& res) {
    res.set_content(metrics::exposition(), metrics::kContentType);
  });
  h.Get("/static/app.css", [](const Request&, Response& res) {
    res.set_header("Cache-Control", "max-age=300");
    res.set_content(assets::kCss, "text/css; charset=utf-8");
  });
  h.Get("/static/app.js", [](const Request&, Response& res) {
    res.set_header("Cache-Control", "max-age=300");
    res.set_content(assets::kJs, "text/javascript; charset=utf-8");
  });
  h.Get("/api/v1/openapi.json",
        [](const Request&, Response& res) { res.set_content(assets::kOpenApi, kJson); });

  // The API.
  h.Get("/api/v1/flows", [this](const Request&, Response& res) { send_json(res, flows_json()); });
  h.Get(R"(/api/v1/flows/([^/]+))", [this](const Request& req, Response& res) {
    const FlowRef flow = options.registry->get(req.matches[1].str());
    if (!flow)
      return problem(res, 404,
                     fmt::format("no flow with slug '{}'", app::valid_text(req.matches[1].str())));
    send_json(res, app::flow_json(*flow));
  });
  h.Get(R"(/api/v1/flows/([^/]+)/graph\.svg)", [this](const Request& req, Response& res) {
    const FlowRef flow = options.registry->get(req.matches[1].str());
    if (!flow)
      return problem(res, 404,
                     fmt::format("no flow with slug '{}'", app::valid_text(req.matches[1].str())));
    const std::string key = flow->def.slug + "@" + flow->version;
    std::string svg;
    {
      std::lock_guard lock(svg_mu);
      if (auto it = svg_cache.find(key); it != svg_cache.end()) svg = it->second;
    }
    if (svg.empty()) {
      auto drawn = flow_svg(flow->def);
      if (!drawn)  // too large to draw (invalid_argument), or a Graphviz failure
        return problem(res, drawn.error().code == Errc::invalid_argument ? 422 : 500,
                       drawn.error().message);
      svg = std::move(*drawn);
      std::lock_guard lock(svg_mu);
      if (svg_cache.size() > 1000) svg_cache.clear();
      svg_cache[key] = svg;
    }
    res.set_content(svg, "image/svg+xml");
  });
  h.Post(R"(/api/v1/flows/([^/]+)/runs)",
         [this](const Request& req, Response& res) { post_run(req, res); });
  h.Get("/api/v1/runs", [this](const Request& req, Response& res) { list_runs(req, res, false); });
  h.Get(R"(/api/v1/runs/([^/]+))", [this](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    auto run = run_with_steps(id);
    if (!run) return send_error(res, run.error());
    send_json(res, *run);
  });
  h.Post(R"(/api/v1/runs/([^/]+)/cancel)", [this](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    auto cancelled = stores.with([&](RunStore& store) { return store.cancel_run(id); });
    if (!cancelled) return send_error(res, cancelled.error());
    if (!*cancelled)
      return problem(res, 409, fmt::format("run {} is not running (nothing to cancel)", id));
    send_json(res, {{"id", id}, {"status", "cancelled"}});
  });
  h.Post(R"(/api/v1/runs/([^/]+)/retry)", [this](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!is_uuid(id)) return problem(res, 404, fmt::format("no run {}", app::valid_text(id)));
    auto fresh = stores.with([&](RunStore& store) -> Result<RunInfo> {
      auto rid = store.retry_run(id);
      if (!rid) return tl::unexpected(std::move(rid.error()));
      auto info = store.get_run(*rid);
      if (!info) return tl::unexpected(std::move(info.error()));
      if (!*info) return make_error(Errc::not_found, "the run vanished");
      return std::move(**info);
    });
    if (!fresh) return send_error(res, fresh.error());
    res.set_header("Location", "/api/v1/runs/" + fresh->id);
    send_json(res, app::run_json(*fresh), 201);
  });
  h.Get("/api/v1/workers", [this](const Request&, Response& res) {
    auto workers = stores.with([](RunStore& store) { return store.list_workers(); });
    if (!workers) return send_error(res, workers.error());
    json out = json::array();
    for (const auto& w : *workers) out.push_back(app::worker_json(w));
    send_json(res, out);
  });
  h.Get("/api/v1/plugins", [this](const Request&, Response& res) {
    json out = json::array();
    for (const auto& p : options.plugins()) out.push_back(app::plugin_json(p));
    send_json(res, out);
  });
  h.Get("/api/v1/events", [this](const Request& req, Response& res) { events(req, res); });

  // The dashboard.
  h.Get("/", [this](const Request&, Response& res) {
    RunFilter recent_filter;
    recent_filter.limit = 200;
    auto runs = stores.with([&](RunStore& store) { return store.list_runs(recent_filter); });
    json recent = json::array();
    if (runs)
      for (const auto& r : *runs) recent.push_back(app::run_json(r));
    res.set_content(dashboard::flows_page(flows_json(), recent), kHtml);
  });
  h.Get(R"(/flows/([^/]+))", [this, html_error](const Request& req, Response& res) {
    const FlowRef flow = options.registry->get(req.matches[1].str());
    if (!flow)
      return html_error(
          res, 404, fmt::format("no flow with slug '{}'", app::valid_text(req.matches[1].str())));
    RunFilter filter;
    filter.flow_slug = flow->def.slug;
    filter.limit = 20;
    auto runs = stores.with([&](RunStore& store) { return store.list_runs(filter); });
    json list = json::array();
    if (runs)
      for (const auto& r : *runs) list.push_back(app::run_json(r));
    res.set_content(dashboard::flow_page(app::flow_json(*flow), list), kHtml);
  });
  h.Get("/runs", [this](const Request& req, Response& res) { list_runs(req, res, true); });
  h.Get(R"(/runs/([^/]+))", [this, html_error](const Request& req, Response& res) {
    const std::string id = req.matches[1];
    if (!is_uuid(id)) return html_error(res, 404, fmt::format("no run {}", app::valid_text(id)));
    auto run = run_with_steps(id);
    if (!run) return html_error(res, status_of(run.error()), run.error().message);
    res.set_content(dashboard::run_page(*run), kHtml);
  });
  h.Get("/workers", [this, html_error](const Request&, Response& res) {
    auto workers = stores.with([](RunStore& store) { return store.list_workers(); });
    if (!workers) return html_error(res, status_of(workers.error()), workers.error().message);
    json out = json::array();
    for (const auto& w : *workers) out.push_back(app::worker_json(w));
    res.set_content(dashboard::workers_page(out), kHtml);
  });
  h.Get("/plugins", [this](const Request&, Response& res) {
    json out = json::array();
    for (const auto& p : options.plugins()) out.push_back(app::plugin_json(p));
    res.set_content(dashboard::plugins_page(out), kHtml);
  });
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
  impl_->hub.stop();
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
