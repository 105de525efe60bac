#include "metrics/http_endpoint.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <utility>

#include "metrics/metrics.hpp"

namespace flowreg::detail::metrics {

struct HttpEndpoint::Server {
  httplib::Server http;
  std::atomic<bool> ended{false};  // listen_after_bind returned
};

namespace {

// ("HOST", PORT) of "HOST:PORT" / "[V6]:PORT", or an error naming the address.
Result<std::pair<std::string, int>> parse_address(std::string_view address) {
  const auto bad = [&](std::string_view why) {
    return make_error(Errc::invalid_argument,
                      fmt::format("--metrics '{}': {} (expected HOST:PORT, such as 127.0.0.1:9464)",
                                  address, why));
  };
  const auto colon = address.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = address.substr(0, colon);
  const std::string_view port_text = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (host.empty()) return bad("no host");
  if (host.size() > 253) return bad("the host is longer than 253 characters");
  int port = -1;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port < 0 || port > 65535)
    return bad("the port is not a number from 0 to 65535");
  return std::make_pair(std::string(host), port);
}

}  // namespace

Result<std::unique_ptr<HttpEndpoint>> HttpEndpoint::start(std::string_view address) {
  auto parsed = parse_address(address);
  if (!parsed) return tl::unexpected(std::move(parsed.error()));
  const auto& [host, port] = *parsed;
  std::unique_ptr<HttpEndpoint> self(new HttpEndpoint());
  self->server_ = std::make_unique<Server>();
  auto& http = self->server_->http;
  http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  http.set_read_timeout(5, 0);
  http.set_write_timeout(5, 0);
  http.set_keep_alive_max_count(100);
  http.set_payload_max_length(1024);
  http.Get("/metrics", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(exposition(), kContentType);
  });
  int bound = port;
  if (port == 0) {
    bound = http.bind_to_any_port(host);
    if (bound < 0) bound = 0;
  } else if (!http.bind_to_port(host, port)) {
    bound = 0;
  }
  if (bound == 0)
    return make_error(Errc::unavailable,
                      fmt::format("--metrics '{}': cannot listen there (address in use, or not "
                                  "an address of this host)",
                                  address));
  const bool v6 = host.find(':') != std::string::npos;
  self->address_ = v6 ? fmt::format("[{}]:{}", host, bound) : fmt::format("{}:{}", host, bound);
  self->thread_ = std::thread([server = self->server_.get()] {
    server->http.listen_after_bind();
    server->ended = true;
  });
  return self;
}

HttpEndpoint::~HttpEndpoint() {
  // stop() does nothing before the server runs: wait until it does (or gave up).
  while (server_ && !server_->ended) {
    if (server_->http.is_running()) {
      server_->http.stop();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace flowreg::detail::metrics
