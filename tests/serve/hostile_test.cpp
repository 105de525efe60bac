// `flowreg serve` against clients that try to freeze it, flood it or read it from another site:
// each case is a measured failure of the thread-per-connection server before it (cpp-httplib),
// replayed over raw sockets against a real `flowreg serve` process.

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "serve/serve_scene.hpp"

using flowreg::servetest::json;
using flowreg::servetest::kToken;
using flowreg::servetest::ServeScene;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// A TCP connection to the server, written and read by hand.
class RawSocket {
 public:
  explicit RawSocket(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawSocket() { ::close(fd_); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }
  bool send_all(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  // What arrives within `wait`, until the peer closes or `until` has arrived.
  std::string read_for(milliseconds wait, std::string_view until = {}) {
    std::string got;
    const auto deadline = Clock::now() + wait;
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (::poll(&p, 1, static_cast<int>(std::max<long>(1, left.count()))) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      got.append(buf, static_cast<std::size_t>(n));
      if (!until.empty() && got.find(until) != std::string::npos) break;
    }
    return got;
  }
  // Whether the server has closed the connection (what it sent before is dropped).
  bool closed() {
    (void)read_for(milliseconds(50));
    return closed_;
  }

 private:
  int fd_;
  bool connected_ = false;
  bool closed_ = false;
};

std::string request(std::string_view method, std::string_view target, std::string_view extra = {},
                    std::string_view host = "127.0.0.1") {
  return std::string(method) + " " + std::string(target) +
         " HTTP/1.1\r\nHost: " + std::string(host) + "\r\n" + std::string(extra) + "\r\n";
}

int status_of(const std::string& response) {
  if (!response.starts_with("HTTP/1.1 ") || response.size() < 12) return 0;
  return std::stoi(response.substr(9, 3));
}

// The peak resident memory of a process (VmHWM), in bytes.
long peak_rss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("VmHWM:")) return std::stol(line.substr(6)) * 1024;
  return -1;
}

// One scene for the cases that need no token: a short whole-request deadline, few handler
// threads and few stream slots, so that exhausting them is cheap. open_reads without a token
// (it changes nothing there: the fourth rebinding mode).
ServeScene& tight_scene() {
  static ServeScene scene("", true, false,
                          "timeout: 3s, max_connections: 4, max_event_streams: 4, "
                          "max_open_connections: 250");
  return scene;
}

// The same without a short deadline, for a case that sends 64 MiB: a loaded machine may take
// longer than tight_scene's 3 s to carry it, and a request past its deadline is closed unanswered.
ServeScene& roomy_scene() {
  static ServeScene scene("", true, false,
                          "timeout: 60s, max_connections: 4, max_event_streams: 4, "
                          "max_open_connections: 250");
  return scene;
}

// What a shell command prints on stdout.
std::string output_of(const std::string& command) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ::pclose(p);
  return out;
}

}  // namespace

TEST_SUITE("serve_hostile") {
  TEST_CASE(
      "200 connections sending their headers a byte at a time neither stop /healthz nor "
      "outlive the whole-request deadline") {
    ServeScene& scene = tight_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    std::vector<std::unique_ptr<RawSocket>> slow;
    for (int i = 0; i < 200; ++i) {
      slow.push_back(std::make_unique<RawSocket>(scene.port));
      REQUIRE(slow.back()->connected());
      REQUIRE(slow.back()->send_all("GET /api/v1/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "));
    }
    const auto began = Clock::now();
    std::atomic<bool> stop{false};
    std::thread trickle([&] {
      while (!stop) {
        for (auto& s : slow) s->send_all("x");
        std::this_thread::sleep_for(milliseconds(500));
      }
    });
    struct Joined {  // also when a REQUIRE below ends the case
      std::atomic<bool>& stop;
      std::thread& thread;
      ~Joined() {
        stop = true;
        if (thread.joinable()) thread.join();
      }
    } joined{stop, trickle};
    // Before: the 16 connection threads and 8 queue places taken, /healthz got no answer for 18 s.
    milliseconds slowest{0};
    for (int i = 0; i < 10; ++i) {
      auto c = scene.client();
      c.set_connection_timeout(2, 0);
      c.set_read_timeout(2, 0);
      const auto t0 = Clock::now();
      auto r = c.Get("/healthz");
      slowest = std::max(slowest, std::chrono::duration_cast<milliseconds>(Clock::now() - t0));
      REQUIRE(r);
      CHECK(r->status == 200);
      std::this_thread::sleep_for(milliseconds(100));
    }
    MESSAGE("slowest /healthz beside 200 slow connections: " << slowest.count() << " ms");
    // server.timeout (3 s) bounds the whole request, not each read: by 5 s every slow connection
    // is closed although each sent a byte every half second.
    std::this_thread::sleep_until(began + std::chrono::seconds(5));
    stop = true;
    trickle.join();
    int closed = 0;
    for (auto& s : slow) closed += s->closed() ? 1 : 0;
    CHECK(closed == 200);
  }

  TEST_CASE("past max_open_connections a connection gets 503 at once, and the others go on") {
    ServeScene& scene = tight_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    std::vector<std::unique_ptr<RawSocket>> held;
    for (int i = 0; i < 250; ++i) held.push_back(std::make_unique<RawSocket>(scene.port));
    // The server counts a connection once its I/O thread has accepted it.
    std::string refused;
    for (int i = 0; i < 20 && status_of(refused) != 503; ++i) {
      RawSocket extra(scene.port);
      extra.send_all(request("GET", "/healthz"));
      refused = extra.read_for(milliseconds(1000), "\r\n\r\n");
    }
    CHECK(status_of(refused) == 503);
    CHECK(refused.find("max_open_connections") != std::string::npos);
    held.resize(200);  // 50 leave
    std::this_thread::sleep_for(milliseconds(200));
    RawSocket again(scene.port);
    again.send_all(request("GET", "/healthz"));
    CHECK(status_of(again.read_for(milliseconds(2000), "\r\n\r\n")) == 200);
  }

  TEST_CASE(
      "a chunked body over 64 MiB gets 413, creates nothing, and the server's memory stays "
      "bounded") {
    ServeScene& scene = roomy_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    const long before = peak_rss(scene.server->pid());
    RawSocket s(scene.port);
    REQUIRE(s.connected());
    REQUIRE(
        s.send_all(request("POST", "/api/v1/flows/marked/runs",
                           "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n")));
    const std::string chunk = "100000\r\n" + std::string(1 << 20, ' ') + "\r\n";  // 1 MiB
    // As a client that reads while it sends: it stops sending once the response begins (the
    // server drains a refused body for 2 s only; a client still sending after that gets a reset,
    // which can drop the response it had not read yet).
    int sent = 0;
    std::string response;
    while (sent < 80 && response.empty() && s.send_all(chunk)) {
      ++sent;
      response = s.read_for(milliseconds(1), "\r\n\r\n");
    }
    if (response.empty()) (void)s.send_all("0\r\n\r\n");
    if (response.find("\r\n\r\n") == std::string::npos)
      response += s.read_for(milliseconds(5000), "\r\n\r\n");
    CHECK(status_of(response) == 413);
    const long after = peak_rss(scene.server->pid());
    MESSAGE("chunks sent: " << sent << ", server peak RSS " << before / 1048576 << " -> "
                            << after / 1048576 << " MiB");
    // Before: the 80 MiB were taken, a run created, and the server peaked at 1.8 GB.
    CHECK(after - before < 300L * 1048576);
    auto c = scene.client();
    auto runs = c.Get("/api/v1/runs?flow=marked");
    REQUIRE(runs);
    CHECK(json::parse(runs->body)["runs"].empty());
  }

  TEST_CASE("100,000 header fields get 431 before any of them is kept") {
    ServeScene& scene = tight_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    std::string headers;
    for (int i = 0; i < 100'000; ++i) headers += "X-Many: " + std::to_string(i) + "\r\n";
    RawSocket s(scene.port);
    REQUIRE(s.connected());
    (void)s.send_all(request("GET", "/api/v1/flows", headers));
    const std::string response = s.read_for(milliseconds(5000), "\r\n\r\n");
    CHECK(status_of(response) == 431);
    // The server goes on serving.
    auto c = scene.client();
    auto r = c.Get("/healthz");
    REQUIRE(r);
    CHECK(r->status == 200);
  }

  TEST_CASE(
      "pipelined requests are each answered, and a POST without a body needs no "
      "Content-Length") {
    ServeScene& scene = tight_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    RawSocket s(scene.port);
    REQUIRE(s.connected());
    // Before: the second request hung its connection for 10 s.
    REQUIRE(s.send_all(request("GET", "/healthz") + request("GET", "/healthz")));
    std::string both;
    const auto deadline = Clock::now() + std::chrono::seconds(2);
    while (Clock::now() < deadline) {
      both += s.read_for(milliseconds(100));
      std::size_t n = 0;
      for (auto at = both.find("HTTP/1.1 200"); at != std::string::npos;
           at = both.find("HTTP/1.1 200", at + 1))
        ++n;
      if (n == 2) break;
    }
    CHECK(both.find("HTTP/1.1 200") != both.rfind("HTTP/1.1 200"));
    // Before: a POST without Content-Length held its connection thread for server.timeout.
    RawSocket post(scene.port);
    REQUIRE(
        post.send_all(request("POST", "/api/v1/runs/00000000-0000-0000-0000-000000000000/cancel")));
    CHECK(status_of(post.read_for(milliseconds(2000), "\r\n\r\n")) == 404);
  }

  TEST_CASE("an event stream's slot is free again within 2 s of its client going away") {
    ServeScene& scene = tight_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    const auto open_streams = [&](int n) {
      std::vector<std::unique_ptr<RawSocket>> out;
      int ok = 0;
      for (int i = 0; i < n; ++i) {
        out.push_back(std::make_unique<RawSocket>(scene.port));
        out.back()->send_all(request("GET", "/api/v1/events"));
        ok += status_of(out.back()->read_for(milliseconds(3000), "\r\n\r\n")) == 200 ? 1 : 0;
      }
      return std::pair(ok, std::move(out));
    };
    auto [first, streams] = open_streams(4);
    REQUIRE(first == 4);
    {  // all four slots taken: a fifth is refused
      RawSocket fifth(scene.port);
      fifth.send_all(request("GET", "/api/v1/events"));
      CHECK(status_of(fifth.read_for(milliseconds(3000), "\r\n\r\n")) == 503);
    }
    streams.clear();  // the tabs close
    // Before: the slots stayed taken about 14 s, and the 9th or 10th page showed "reconnecting".
    std::this_thread::sleep_for(std::chrono::seconds(2));
    auto [again, reopened] = open_streams(4);
    CHECK(again == 4);
  }

  TEST_CASE("each request is logged and counted") {
    ServeScene& scene = tight_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    REQUIRE(c.Get("/healthz"));
    auto metrics = c.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metrics->body.find("flowreg_http_requests_total{route=\"/healthz\",status=\"200\"}") !=
          std::string::npos);
    CHECK(metrics->body.find("flowreg_http_request_duration_seconds_bucket{route=\"/healthz\"") !=
          std::string::npos);
    CHECK(metrics->body.find("flowreg_http_open_connections ") != std::string::npos);
    CHECK(scene.log().find("http GET /healthz 200 ") != std::string::npos);
  }

  TEST_CASE("invalid UTF-8 in a path, a query or a Host is answered and logged as valid UTF-8") {
    ServeScene& scene = tight_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    // nlohmann::json refuses to write a string that is not valid UTF-8: a test of validity.
    const auto valid = [](const std::string& text) {
      try {
        (void)json(text).dump();
        return true;
      } catch (const json::exception&) {
        return false;
      }
    };
    const std::string bad = "\xff\xfe\xc3(";
    struct Case {
      std::string target, host;
    };
    for (const Case& k : {Case{"/api/v1/flows/%FF%FE%C3%28", "127.0.0.1"},  // decoded into the path
                          Case{"/api/v1/flows/" + bad, "127.0.0.1"},  // raw bytes in the target
                          Case{"/api/v1/runs?status=%FF%C3", "127.0.0.1"},  // a query value
                          Case{"/api/v1/runs", "h" + bad + ".example"}}) {
      CAPTURE(k.target);
      RawSocket s(scene.port);
      s.send_all(request("GET", k.target, {}, k.host));
      const std::string response = s.read_for(milliseconds(3000), "}");
      const int status = status_of(response);
      CHECK(status >= 400);
      CHECK(status < 500);
      const auto body_at = response.find("\r\n\r\n");
      REQUIRE(body_at != std::string::npos);
      const std::string body = response.substr(body_at + 4);
      CAPTURE(body);
      CHECK(valid(body));
      if (!body.empty() && body.front() == '{') CHECK(json::accept(body));
    }
    // The access log names each request, made valid.
    const std::string log = scene.log();
    CHECK(valid(log));
    CHECK(log.find("http GET /api/v1/flows/") != std::string::npos);
  }

  TEST_CASE("a rebound Host is refused in every mode: token or not, open_reads or not") {
    // The fourth mode (no token, no open_reads) is the serve suite's case of another site's page.
    struct Mode {
      const char* name;
      ServeScene* scene;
      std::string token;
    };
    ServeScene token_open(kToken, true, false, "allowed_hosts: [flowreg.example]");
    ServeScene token_closed(kToken, false);
    for (const Mode& m : {Mode{"no token, open_reads", &tight_scene(), ""},
                          Mode{"token, open_reads", &token_open, kToken},
                          Mode{"token, no open_reads", &token_closed, kToken}}) {
      CAPTURE(m.name);
      REQUIRE_MESSAGE(m.scene->port > 0, m.scene->log());
      for (const char* path : {"/api/v1/runs", "/runs", "/metrics"}) {
        CAPTURE(path);
        for (const std::string& token : {std::string(), m.token}) {
          RawSocket s(m.scene->port);
          const std::string auth =
              token.empty() ? std::string() : "Authorization: Bearer " + token + "\r\n";
          s.send_all(request("GET", path, auth, "rebound.example:80"));
          // Before: with a token the Host was not checked, and all three answered 200.
          CHECK(status_of(s.read_for(milliseconds(3000), "\r\n\r\n")) == 403);
        }
      }
    }
    // Names the server is reached by are accepted: server.allowed_hosts, localhost, an address.
    for (const char* host : {"flowreg.example:80", "localhost:80", "127.0.0.1"}) {
      CAPTURE(host);
      RawSocket s(token_open.port);
      s.send_all(request("GET", "/api/v1/runs", {}, host));
      CHECK(status_of(s.read_for(milliseconds(3000), "\r\n\r\n")) == 200);
    }
  }

  TEST_CASE("a remote dashboard: a browser signs in with the token once, then works by cookie") {
    ServeScene scene(kToken);
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    const std::string self = "127.0.0.1:" + std::to_string(scene.port);
    auto c = scene.client();
    const httplib::Headers browser{{"Accept", "text/html,application/xhtml+xml"}};
    // A page without a session: to the sign-in page, and back afterwards.
    {  // read raw: the tests' HTTP client decodes %XX in header values
      RawSocket s(scene.port);
      s.send_all(request("GET", "/runs?status=failed", "Accept: text/html\r\n"));
      const std::string page = s.read_for(milliseconds(3000), "\r\n\r\n");
      CHECK(status_of(page) == 303);
      CHECK(page.find("\r\nLocation: /signin?next=/runs%3Fstatus%3Dfailed\r\n") !=
            std::string::npos);
    }
    auto form = c.Get("/signin?next=/runs%3Fstatus%3Dfailed");
    REQUIRE(form);
    CHECK(form->status == 200);
    CHECK(form->body.find("name=\"token\"") != std::string::npos);
    // The API still answers 401 to a client without a token.
    auto api = c.Get("/api/v1/runs");
    REQUIRE(api);
    CHECK(api->status == 401);
    const httplib::Headers origin{{"Origin", "http://" + self}};
    auto wrong = c.Post("/signin", origin, "token=not-the-token-0123456&next=%2Fruns",
                        "application/x-www-form-urlencoded");
    REQUIRE(wrong);
    CHECK(wrong->status == 401);
    CHECK(wrong->get_header_value("Set-Cookie").empty());
    auto right = c.Post("/signin", origin,
                        std::string("token=") + kToken + "&next=%2Fruns%3Fstatus%3Dfailed",
                        "application/x-www-form-urlencoded");
    REQUIRE(right);
    CHECK(right->status == 303);
    CHECK(right->get_header_value("Location") == "/runs?status=failed");
    const std::string set_cookie = right->get_header_value("Set-Cookie");
    CHECK(set_cookie.find("HttpOnly") != std::string::npos);
    CHECK(set_cookie.find("SameSite=Strict") != std::string::npos);
    CHECK(set_cookie.find("Secure") == std::string::npos);  // plain HTTP here
    const std::string cookie = set_cookie.substr(0, set_cookie.find(';'));
    httplib::Headers session = browser;
    session.emplace("Cookie", cookie);
    auto signed_page = c.Get("/runs", session);
    REQUIRE(signed_page);
    CHECK(signed_page->status == 200);
    auto signed_api = c.Get("/api/v1/runs", httplib::Headers{{"Cookie", cookie}});
    REQUIRE(signed_api);
    CHECK(signed_api->status == 200);
    // Signing out ends the session on the server, not only in the browser.
    httplib::Headers out = origin;
    out.emplace("Cookie", cookie);
    auto logout = c.Post("/logout", out, "", "application/x-www-form-urlencoded");
    REQUIRE(logout);
    CHECK(logout->status == 303);
    CHECK(logout->get_header_value("Set-Cookie").find("Max-Age=0") != std::string::npos);
    auto after = c.Get("/runs", session);
    REQUIRE(after);
    CHECK(after->status == 303);
    // Another site cannot sign a browser in with a token of its own (Origin checked).
    auto forged = c.Post("/signin", httplib::Headers{{"Origin", "http://evil.example"}},
                         std::string("token=") + kToken, "application/x-www-form-urlencoded");
    REQUIRE(forged);
    CHECK(forged->status == 403);
  }

  TEST_CASE("with server.tls_cert the server speaks HTTPS only, and the session cookie is Secure") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("flowreg_tls_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
    REQUIRE(std::system(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                         "-keyout " +
                         key + " -out " + cert + " 2>/dev/null")
                            .c_str()) == 0);
    ServeScene scene(kToken, false, false, "tls_cert: " + cert + ", tls_key: " + key);
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    CHECK(scene.log().find("listening on https://127.0.0.1:") != std::string::npos);
    const std::string base = "https://127.0.0.1:" + std::to_string(scene.port);
    CHECK(output_of("curl -sk " + base + "/healthz") == "{\"status\":\"ok\"}");
    const std::string signin = output_of("curl -sk -i -X POST -H 'Origin: " + base +
                                         "' --data 'token=" + kToken + "' " + base + "/signin");
    CHECK(signin.starts_with("HTTP/1.1 303"));
    const auto cookie = signin.find("Set-Cookie: flowreg_session=");
    REQUIRE(cookie != std::string::npos);
    CHECK(signin.substr(cookie, signin.find("\r\n", cookie) - cookie).ends_with("; Secure"));
    // Plain HTTP on the same port gets no answer.
    RawSocket s(scene.port);
    s.send_all(request("GET", "/healthz"));
    CHECK(status_of(s.read_for(milliseconds(3000), "\r\n\r\n")) == 0);
    fs::remove_all(dir);
  }
}
