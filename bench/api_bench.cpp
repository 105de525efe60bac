// api_bench: throughput and latency of `flowreg serve`'s API. Starts a real `flowreg serve` on an
// embedded cluster of its own (in a scratch directory) with the worker bench's plugin, starts one
// run, then for 1 and 32 concurrent keep-alive connections sends GET /api/v1/flows/{slug} and
// GET /api/v1/runs/{id} for a fixed time each and prints requests/s, p50 and p99; then the same
// again with 200 more connections held open and idle (connected, sending nothing) beside them.
//
//   api_bench [SECONDS_PER_CASE=3]
//   API_BENCH_FLOWREG=/path/to/another/flowreg api_bench   # the same against another build

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/embedded_cluster.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Figures {
  double rps = 0, p50_ms = 0, p99_ms = 0;
  long errors = 0;
};

Figures measure(int port, const std::string& path, int connections, double seconds) {
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(connections));
  std::atomic<long> errors{0};
  std::vector<std::thread> threads;
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
  const auto begin = Clock::now();
  for (int i = 0; i < connections; ++i)
    threads.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", port);
      c.set_keep_alive(true);
      c.set_tcp_nodelay(true);
      auto& mine = lat[static_cast<std::size_t>(i)];
      while (Clock::now() < end) {
        const auto t0 = Clock::now();
        auto r = c.Get(path.c_str());
        const auto t1 = Clock::now();
        if (!r || r->status != 200) {
          ++errors;
          continue;
        }
        mine.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
    });
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - begin).count();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  Figures f;
  f.errors = errors;
  if (all.empty()) return f;
  f.rps = static_cast<double>(all.size()) / elapsed;
  f.p50_ms = all[all.size() / 2];
  f.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  return f;
}

// A connection opened and left idle: it sends nothing until it is closed.
int idle_connection(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  (void)::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 3.0;
  std::string tmpl = "/tmp/flowreg_api_bench_XXXXXX";
  const fs::path dir = mkdtemp(tmpl.data());
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  std::ofstream(dir / "flowreg.yaml")
      << "plugins: {dir: \"" << BENCH_WORKER_PLUGIN_DIR << "\", watch: false}\n"
      << "database: {data_dir: data}\n"
      << "server: {listen: \"127.0.0.1:0\", max_connections: 64, timeout: 120s}\n";
  const std::string config = (dir / "flowreg.yaml").string(), err = (dir / "serve.err").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const char* other = std::getenv("API_BENCH_FLOWREG");
  const char* binary = other != nullptr && *other != '\0' ? other : FLOWREG_BINARY;
  const char* args[] = {binary, "--config", config.c_str(), "serve", nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, binary, &actions, nullptr, const_cast<char**>(args), environ) != 0) {
    fmt::print(stderr, "api_bench: cannot start {}\n", binary);
    return 1;
  }
  int port = 0;
  for (int i = 0; i < 600 && port == 0; ++i) {
    const std::string s = read_file(err);
    const auto at = s.find("listening on http://127.0.0.1:");
    if (at != std::string::npos && s.find('/', at + 30) != std::string::npos)
      port = std::stoi(s.substr(at + 30));
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  int status = 1;
  if (port == 0) {
    fmt::print(stderr, "api_bench: the server did not start:\n{}\n", read_file(err));
  } else {
    httplib::Client c("127.0.0.1", port);
    const auto flows = nlohmann::json::parse(c.Get("/api/v1/flows")->body);
    const std::string slug = flows.at(0).at("slug");
    auto started = c.Post(("/api/v1/flows/" + slug + "/runs").c_str(), "{}", "application/json");
    if (!started || started->status != 201) {
      fmt::print(stderr, "api_bench: cannot start a run: {}\n", started ? started->body : "");
    } else {
      const std::string id = nlohmann::json::parse(started->body)["id"];
      fmt::print("flowreg serve API ({}), {} s per case, keep-alive connections\n", binary,
                 seconds);
      fmt::print("{:<24} {:>5} {:>5} {:>10} {:>8} {:>8} {:>7}\n", "route", "conns", "idle", "req/s",
                 "p50 ms", "p99 ms", "errors");
      std::vector<int> idle;
      for (int held : {0, 200}) {
        while (static_cast<int>(idle.size()) < held) idle.push_back(idle_connection(port));
        for (const std::string& path : {"/api/v1/flows/" + slug, "/api/v1/runs/" + id})
          for (int conns : {1, 32}) {
            const Figures f = measure(port, path, conns, seconds);
            fmt::print("{:<24} {:>5} {:>5} {:>10.0f} {:>8.3f} {:>8.3f} {:>7}\n",
                       path.substr(0, 20) + (path.size() > 20 ? "..." : ""), conns, held, f.rps,
                       f.p50_ms, f.p99_ms, f.errors);
          }
      }
      for (int fd : idle) ::close(fd);
      status = 0;
    }
  }
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  if (auto cluster = flowreg::detail::EmbeddedCluster::open(dir / "data")) (void)cluster->stop();
  std::error_code ec;
  fs::remove_all(dir, ec);
  return status;
}
