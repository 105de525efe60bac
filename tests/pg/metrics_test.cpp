// `flowreg worker --metrics` and `--log-format json` on real worker processes and an embedded
// cluster: the /metrics text after runs that completed, failed and were cancelled (values, and
// `promtool check metrics`), and every line of a worker's stderr parsed as JSON.

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "cli_scratch.hpp"
#include "support/metrics_text.hpp"
#include "support/process.hpp"
#include "worker_scene.hpp"

namespace {

using namespace std::chrono_literals;
using flowreg::pgtest::eventually;
using flowreg::pgtest::read_file;
using flowreg::test::Child;
using flowreg::test::metric_sample;
using json = nlohmann::json;

struct Scratch : flowreg::pgtest::CliScratch {
  Scratch() : CliScratch("flowreg_metrics") {
    // count: served; idle: registered but not served (its runs wait, to be cancelled).
    std::ofstream(config) << "plugins: {dir: " << FLOWREG_EXAMPLE_PLUGIN_DIR << ", watch: false}\n"
                          << "database: {data_dir: " << (dir / "data").string() << "}\n"
                          << "flows:\n"
                          << "  - slug: count\n"
                          << "    steps: [{slug: words, handler: text.count_words}]\n"
                          << "  - slug: idle\n"
                          << "    steps: [{slug: words, handler: text.count_words}]\n";
  }
  std::string err() const { return read_file(dir / "worker.err"); }
  // A worker serving `count` only, with `extra` global options before the command and `metrics`
  // after it; waits until it serves.
  Child worker(const std::vector<std::string>& globals, const std::vector<std::string>& options) {
    std::vector<std::string> argv = {FLOWREG_BINARY, "--config", config.string()};
    argv.insert(argv.end(), globals.begin(), globals.end());
    argv.insert(argv.end(), {"worker", "--id", "w-metrics", "--concurrency", "2", "--flows",
                             "count", "--poll-interval", "200ms"});
    argv.insert(argv.end(), options.begin(), options.end());
    Child w = Child::spawn(argv, (dir / "worker.out").string(), (dir / "worker.err").string());
    const bool serving = eventually(
        [&] {
          REQUIRE_MESSAGE(::kill(w.pid(), 0) == 0, err());
          return err().find("serving count@") != std::string::npos;
        },
        120s);
    REQUIRE_MESSAGE(serving, err());
    return w;
  }
  // `flowreg run SLUG --input INPUT --json`, its run id.
  std::string run(const std::string& slug, const std::string& input, bool wait) {
    std::vector<std::string> args = {"run", slug, "--input", input, "--json"};
    if (wait) args.insert(args.end(), {"--wait", "--timeout", "120s"});
    auto r = flowreg(args);
    REQUIRE_MESSAGE(r.exit_code == (input == "\"a b c\"" || !wait ? 0 : 1), r.err);
    return json::parse(r.out)["id"].get<std::string>();
  }
};

// GET http://127.0.0.1:PORT/PATH: the whole response (status line, headers, body).
std::string http_get(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const std::string request =
      "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  REQUIRE(::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
  std::string response;
  char buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) response.append(buf, buf + n);
  ::close(fd);
  return response;
}

std::string body_of(const std::string& response) {
  const auto end = response.find("\r\n\r\n");
  return end == std::string::npos ? std::string() : response.substr(end + 4);
}

// `promtool check metrics` on `text` (fails, never skips, when promtool is missing).
flowreg::test::ProcessResult promtool(const std::filesystem::path& dir, const std::string& text) {
  const auto file = dir / "scrape.txt";
  std::ofstream(file) << text;
  return flowreg::test::run_process(
      {"/bin/sh", "-c", "promtool check metrics < '" + file.string() + "'"});
}

}  // namespace

TEST_SUITE("worker_metrics") {
  TEST_CASE("a worker's /metrics counts the runs that completed, failed and were cancelled") {
    Scratch s;
    Child w = s.worker({"--log-level", "info"}, {"--metrics", "127.0.0.1:0"});
    // The bound address is printed on startup.
    std::smatch m;
    const std::string err = s.err();
    REQUIRE_MESSAGE(
        std::regex_search(err, m, std::regex("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics")),
        err);
    const int port = std::stoi(m[1]);
    REQUIRE(port > 0);

    const auto scrape = [&] {
      const std::string response = http_get(port, "/metrics");
      REQUIRE_MESSAGE(response.rfind("HTTP/1.1 200", 0) == 0, response);
      CHECK(response.find("Content-Type: text/plain; version=0.0.4; charset=utf-8") !=
            std::string::npos);
      return "\n" + body_of(response);
    };
    // The run counters count from the first scrape that read the store.
    REQUIRE(eventually([&] { return metric_sample(scrape(), "flowreg_run_store_up") == 1; }, 60s));
    CHECK(http_get(port, "/other").rfind("HTTP/1.1 404", 0) == 0);

    for (int i = 0; i < 3; ++i) s.run("count", "\"a b c\"", true);
    s.run("count", "{\"not\": \"a string\"}", true);  // count_words fails it permanently
    const std::string idle = s.run("idle", "\"x\"", false);
    CHECK(eventually(
        [&] { return metric_sample(scrape(), "flowreg_tasks_queued{flow=\"idle\"}") == 1; }, 60s));
    // No worker serves "idle": its task's wait shows, and grows.
    double waited = 0;
    CHECK(eventually(
        [&] {
          waited = metric_sample(scrape(), "flowreg_tasks_oldest_ready_seconds{flow=\"idle\"}");
          return waited > 0.5;
        },
        60s));
    CHECK(waited < 600);
    auto cancelled = s.flowreg({"runs", "cancel", idle});
    REQUIRE_MESSAGE(cancelled.exit_code == 0, cancelled.err);

    std::string text;
    const bool counted = eventually(
        [&] {
          text = scrape();
          return metric_sample(text, "flowreg_runs_cancelled_total{flow=\"idle\"}") == 1 &&
                 metric_sample(text, "flowreg_runs_completed_total{flow=\"count\"}") == 3 &&
                 metric_sample(text, "flowreg_runs_failed_total{flow=\"count\"}") == 1;
        },
        60s);
    CHECK_MESSAGE(counted, text);
    CHECK(metric_sample(text, "flowreg_runs_started_total{flow=\"count\"}") == 4);
    CHECK(metric_sample(text, "flowreg_runs_started_total{flow=\"idle\"}") == 1);
    CHECK(metric_sample(text, "flowreg_runs_completed_total{flow=\"idle\"}") == -1);
    CHECK(metric_sample(text, "flowreg_tasks_queued{flow=\"idle\"}") == 0);
    CHECK(metric_sample(text, "flowreg_tasks_running{flow=\"idle\"}") == 0);
    CHECK(metric_sample(text, "flowreg_tasks_oldest_ready_seconds{flow=\"idle\"}") == 0);
    // Four tasks ran on this worker, each observed once.
    CHECK(metric_sample(text,
                        "flowreg_task_duration_seconds_count{flow=\"count\",step=\"words\"}") == 4);
    CHECK(metric_sample(
              text, "flowreg_task_start_latency_seconds_count{flow=\"count\",step=\"words\"}") ==
          4);
    CHECK(metric_sample(text, "flowreg_completion_round_trip_seconds_count") >= 1);
    CHECK(metric_sample(text, "flowreg_claim_round_trip_seconds_count") >= 1);
    CHECK(metric_sample(text, "flowreg_plugin_loads_total") == 3);  // text, orders, files
    CHECK(metric_sample(text, "flowreg_registry_flows") >= 2);
    CHECK(metric_sample(text, "flowreg_database_reconnects_total") == 0);
    CHECK(text.find("\nflowreg_build_info{version=\"") != std::string::npos);

    auto check = promtool(s.dir, text.substr(1));
    CHECK_MESSAGE(check.exit_code == 0, check.out << check.err << text);
    w.signal(SIGTERM);
    CHECK(w.wait(60s) == std::optional<int>(0));
  }

  TEST_CASE("with --log-format json every line a worker writes on stderr is a JSON object") {
    Scratch s;
    Child w =
        s.worker({"--log-level", "debug", "--log-format", "json"}, {"--metrics", "127.0.0.1:0"});
    const std::string ok = s.run("count", "\"a b c\"", true);
    const std::string failed = s.run("count", "{\"not\": \"a string\"}", true);
    w.signal(SIGTERM);
    REQUIRE(w.wait(60s) == std::optional<int>(0));

    std::istringstream lines(s.err());
    int n = 0;
    bool serving = false, stopped = false, task_of_failed = false;
    for (std::string line; std::getline(lines, line);) {
      ++n;
      CAPTURE(line);
      json j;
      REQUIRE_NOTHROW(j = json::parse(line));
      REQUIRE(j.is_object());
      CHECK(j["time"].is_string());
      CHECK(j["level"].is_string());
      CHECK(j["message"].is_string());
      const std::string message = j["message"];
      serving = serving || message.find("serving count@") != std::string::npos;
      stopped = stopped || message.find(": stopped;") != std::string::npos;
      if (j.contains("run") && j["run"] == failed) {
        task_of_failed = true;
        CHECK(j["flow"] == "count");
        CHECK(j["step"] == "words");
        CHECK(j["worker"] == "w-metrics");
      }
    }
    CHECK(n > 3);
    CHECK(serving);
    CHECK(stopped);
    CHECK_MESSAGE(task_of_failed, s.err());
    (void)ok;
  }
}
