#include "metrics/metrics.hpp"

#include <doctest/doctest.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "logging/json_log.hpp"
#include "metrics/http_endpoint.hpp"
#include "support/process.hpp"

namespace m = flowreg::detail::metrics;
namespace logging = flowreg::detail::logging;

namespace {

const std::string kReplacement = "\xEF\xBF\xBD";

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// `promtool check metrics` (Debian's prometheus package) on `text`: its exit code and output.
// Fails, never skips, when promtool is missing (the shell exits 127).
flowreg::test::ProcessResult promtool(const std::string& text) {
  char tmpl[] = "/tmp/flowreg_metrics_XXXXXX";
  const int fd = ::mkstemp(tmpl);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(tmpl) << text;
  auto r = flowreg::test::run_process(
      {"/bin/sh", "-c", std::string("promtool check metrics < '") + tmpl + "'"});
  std::filesystem::remove(tmpl);
  return r;
}

}  // namespace

TEST_SUITE("metrics") {
  TEST_CASE("counters, gauges and histograms render with their HELP and TYPE lines") {
    m::Registry r;
    r.counter("t_events_total", "Events.", {"flow"}).with({"a"}).inc(3);
    r.gauge("t_level", "A level.", {}).with({}).set(2.5);
    auto& h = r.histogram("t_wait_seconds", "Waits.", {"flow", "step"}, m::kLatencySecondsBuckets);
    h.with({"a", "b"}).observe(0.003);
    const std::string text = r.render();
    CHECK(contains(text, "# HELP t_events_total Events.\n# TYPE t_events_total counter\n"));
    CHECK(contains(text, "t_events_total{flow=\"a\"} 3\n"));
    CHECK(contains(text, "# TYPE t_level gauge\nt_level 2.5\n"));
    CHECK(contains(text, "# TYPE t_wait_seconds histogram\n"));
    CHECK(contains(text, "t_wait_seconds_bucket{flow=\"a\",step=\"b\",le=\"0.0025\"} 0\n"));
    CHECK(contains(text, "t_wait_seconds_bucket{flow=\"a\",step=\"b\",le=\"0.005\"} 1\n"));
    CHECK(contains(text, "t_wait_seconds_bucket{flow=\"a\",step=\"b\",le=\"+Inf\"} 1\n"));
    CHECK(contains(text, "t_wait_seconds_count{flow=\"a\",step=\"b\"} 1\n"));
    CHECK(contains(text, "t_wait_seconds_sum{flow=\"a\",step=\"b\"} 0.003\n"));
    auto check = promtool(text);
    CHECK_MESSAGE(check.exit_code == 0, check.out << check.err);
  }

  TEST_CASE("a histogram counts a value equal to a bound in that bucket, cumulatively") {
    const double bounds[] = {1, 2, 5};
    m::Histogram h(bounds);
    for (double v : {0.5, 1.0, 1.5, 2.0, 7.0}) h.observe(v);
    CHECK(h.counts() == std::vector<std::uint64_t>{2, 2, 0, 1});
    CHECK(h.sum() == doctest::Approx(12.0));
    m::Registry r;
    r.histogram("t_h", "H.", {}, bounds).with({}).observe(1.0);
    const std::string text = r.render();
    CHECK(contains(text, "t_h_bucket{le=\"1\"} 1\n"));
    CHECK(contains(text, "t_h_bucket{le=\"5\"} 1\n"));
    CHECK(contains(text, "t_h_bucket{le=\"+Inf\"} 1\n"));
    CHECK(contains(text, "t_h_count 1\n"));
  }

  TEST_CASE("label values escape quotes, backslashes and newlines, and invalid UTF-8 is replaced") {
    CHECK(m::escape_label_value("a\"b") == "a\\\"b");
    CHECK(m::escape_label_value("a\\b") == "a\\\\b");
    CHECK(m::escape_label_value("a\nb") == "a\\nb");
    CHECK(m::escape_label_value("caf\xE9") == "caf" + kReplacement);
    m::Registry r;
    auto& f = r.counter("t_hostile_total", "Hostile\\ help\nwith a newline.", {"flow"});
    f.with({"q\"uote"}).inc();
    f.with({"back\\slash"}).inc();
    f.with({"new\nline"}).inc();
    f.with({"latin\xE9-1"}).inc();
    f.with({"} 1\nfake_metric 2"}).inc();
    const std::string text = r.render();
    CHECK(contains(text, "# HELP t_hostile_total Hostile\\\\ help\\nwith a newline.\n"));
    CHECK(contains(text, "t_hostile_total{flow=\"q\\\"uote\"} 1\n"));
    CHECK(contains(text, "t_hostile_total{flow=\"back\\\\slash\"} 1\n"));
    CHECK(contains(text, "t_hostile_total{flow=\"new\\nline\"} 1\n"));
    CHECK(contains(text, "t_hostile_total{flow=\"latin" + kReplacement + "-1\"} 1\n"));
    CHECK_FALSE(contains(text, "\nfake_metric"));
    auto check = promtool(text);
    CHECK_MESSAGE(check.exit_code == 0, check.out << check.err);
  }

  TEST_CASE("a family holds a bounded number of label sets, then one overflow series") {
    m::Registry r;
    auto& f = r.counter("t_many_total", "Many.", {"flow"});
    for (std::size_t i = 0; i < m::FamilyBase::kMaxSeries + 10; ++i)
      f.with({"f" + std::to_string(i)}).inc();
    const std::string text = r.render();
    CHECK(contains(text, "t_many_total{flow=\"_overflow\"} 10\n"));
    CHECK(contains(text, "t_many_total{flow=\"f0\"} 1\n"));
    // A label set known before the bound was reached keeps its own series.
    f.with({"f0"}).inc();
    CHECK(contains(r.render(), "t_many_total{flow=\"f0\"} 2\n"));
  }

  TEST_CASE("a family keeps only the label values it is told to retain") {
    m::Registry r;
    auto& f = r.gauge("t_next_seconds", "Next.", {"schedule"});
    f.with({"a"}).set(1);
    f.with({"b\"q"}).set(2);
    f.with({"c"}).set(3);
    const std::vector<std::string> keep = {"b\"q", "c"};
    f.retain(keep);
    const std::string text = r.render();
    CHECK(!contains(text, "schedule=\"a\""));
    CHECK(contains(text, "t_next_seconds{schedule=\"b\\\"q\"} 2\n"));
    CHECK(contains(text, "t_next_seconds{schedule=\"c\"} 3\n"));
    f.retain({});
    CHECK(!contains(r.render(), "t_next_seconds{"));
  }

  TEST_CASE("the same name asked twice is one family") {
    m::Registry r;
    r.counter("t_once_total", "Once.", {}).with({}).inc();
    r.counter("t_once_total", "Once.", {}).with({}).inc();
    const std::string text = r.render();
    CHECK(text.find("# TYPE t_once_total") == text.rfind("# TYPE t_once_total"));
    CHECK(contains(text, "t_once_total 2\n"));
  }

  TEST_CASE("scrape hooks run before each rendering until their token dies") {
    m::Registry r;
    auto& g = r.gauge("t_scrapes", "Scrapes.", {}).with({});
    int runs = 0;
    auto token = r.on_scrape([&] { g.set(++runs); });
    CHECK(contains(r.render(), "t_scrapes 1\n"));
    CHECK(contains(r.render(), "t_scrapes 2\n"));
    token.reset();
    CHECK(contains(r.render(), "t_scrapes 2\n"));
    CHECK(runs == 2);
  }

  TEST_CASE("observations from many threads are all counted") {
    m::Registry r;
    auto& family = r.histogram("t_par_seconds", "Par.", {"flow", "step"}, m::kTaskSecondsBuckets);
    auto& counter = r.counter("t_par_total", "Par.", {"flow"});
    constexpr int kThreads = 4, kEach = 20000;
    std::vector<std::thread> threads;
    std::atomic<bool> rendering{true};
    std::thread scraper([&] {
      while (rendering) (void)r.render();
    });
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        auto& h = family.with({"f", "s" + std::to_string(t % 2)});
        auto& c = counter.with({"f"});
        for (int i = 0; i < kEach; ++i) {
          h.observe(0.01 * (i % 7));
          c.inc();
        }
      });
    for (auto& t : threads) t.join();
    rendering = false;
    scraper.join();
    const std::string text = r.render();
    CHECK(contains(text, "t_par_total{flow=\"f\"} " + std::to_string(kThreads * kEach) + "\n"));
    CHECK(contains(text, "t_par_seconds_count{flow=\"f\",step=\"s0\"} " +
                             std::to_string(kThreads / 2 * kEach) + "\n"));
    CHECK(contains(text, "t_par_seconds_count{flow=\"f\",step=\"s1\"} " +
                             std::to_string(kThreads / 2 * kEach) + "\n"));
  }

  TEST_CASE("the process's exposition names every flowreg metric and passes promtool") {
    m::step_series("flow_a", "step_b")->task_seconds.observe(0.2);
    m::plugin_load_failures("elf").inc();
    m::schedule_firings("skipped").inc();
    m::schedule_fire_lag().observe(0.2);
    const std::string text = m::exposition();
    for (const char* name :
         {"flowreg_build_info", "flowreg_task_duration_seconds",
          "flowreg_task_start_latency_seconds", "flowreg_claim_round_trip_seconds",
          "flowreg_completion_round_trip_seconds", "flowreg_database_reconnects_total",
          "flowreg_plugin_loads_total", "flowreg_plugin_load_failures_total",
          "flowreg_registry_flows", "flowreg_schedule_firings_total",
          "flowreg_schedule_fire_lag_seconds"}) {
      CAPTURE(name);
      CHECK(contains(text, std::string("# TYPE ") + name + " "));
    }
    CHECK(contains(text, "flowreg_plugin_load_failures_total{stage=\"elf\"} 1\n"));
    // Every outcome from the start; only the one recorded counts.
    CHECK(contains(text, "flowreg_schedule_firings_total{outcome=\"skipped\"} 1\n"));
    CHECK(contains(text, "flowreg_schedule_firings_total{outcome=\"started\"} 0\n"));
    CHECK(contains(text, "flowreg_schedule_fire_lag_seconds_bucket{le=\"0.25\"} 1\n"));
    CHECK(contains(
        text,
        "flowreg_task_duration_seconds_bucket{flow=\"flow_a\",step=\"step_b\",le=\"0.25\"} 1\n"));
    auto check = promtool(text);
    CHECK_MESSAGE(check.exit_code == 0, check.out << check.err);
  }

  TEST_CASE("the metrics endpoint refuses a malformed address, naming it") {
    for (const char* bad :
         {"127.0.0.1", "127.0.0.1:", ":9464", "127.0.0.1:65536", "127.0.0.1:x1", "127.0.0.1:-1"}) {
      CAPTURE(bad);
      auto r = m::HttpEndpoint::start(bad);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == flowreg::Errc::invalid_argument);
      CHECK(contains(r.error().message, std::string("'") + bad + "'"));
    }
  }
}

TEST_SUITE("json_log") {
  TEST_CASE("a JSON log line parses and holds the time, level, message and the scope's fields") {
    const std::string run = "0b7e", flow = "count", step = "words", worker = "w1";
    std::string text;
    {
      const logging::LogScope scope({worker, flow, step, run, {}});
      text = logging::json_line("warning", "task 3 failed");
    }
    REQUIRE(!text.empty());
    CHECK(text.back() == '\n');
    CHECK(text.find('\n') == text.size() - 1);
    const auto j = nlohmann::json::parse(text);
    CHECK(j["level"] == "warning");
    CHECK(j["message"] == "task 3 failed");
    CHECK(j["worker"] == "w1");
    CHECK(j["flow"] == "count");
    CHECK(j["step"] == "words");
    CHECK(j["run"] == "0b7e");
    const std::string time = j["time"];
    CHECK(time.size() == 27);  // 2026-11-22T16:00:00.123456Z
    CHECK(time.back() == 'Z');
    // Out of the scope: no fields.
    const auto bare = nlohmann::json::parse(logging::json_line("info", "x"));
    CHECK_FALSE(bare.contains("flow"));
    CHECK_FALSE(bare.contains("run"));
  }

  TEST_CASE("any message text stays one line of valid JSON and valid UTF-8") {
    const std::string hostile = "quote \" backslash \\ newline \n tab \t nul " +
                                std::string(1, '\0') + " latin \xE9 cut \xE2\x82 ctl \x1b[31m";
    const std::string step = "st\xFFp";
    const logging::LogScope scope({{}, {}, step, {}, {}});
    const std::string text = logging::json_line("error", hostile);
    CHECK(text.find('\n') == text.size() - 1);
    nlohmann::json j;
    REQUIRE_NOTHROW(j = nlohmann::json::parse(text));
    const std::string message = j["message"];
    CHECK(contains(message, "quote \" backslash \\ newline \n tab"));
    CHECK(contains(message, "latin " + kReplacement));
    CHECK(j["step"] == "st" + kReplacement + "p");
    CHECK_NOTHROW((void)j.dump());  // the strict serializer throws on invalid UTF-8
  }
}
