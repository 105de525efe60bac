// `flowreg run` and `flowreg runs ...` through the real binary, on a cluster of their own. The test
// plays the worker through the store, so that `run --wait` can be seen to end.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "cluster/embedded_cluster.hpp"
#include "pg/cli_scratch.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Scratch : flowreg::pgtest::CliScratch {
  Scratch() : CliScratch("flowreg_cli_runs") {
    std::ofstream(config) << "plugins: {dir: " << FLOWREG_EXAMPLE_PLUGIN_DIR << "}\n"
                          << "database: {data_dir: " << (dir / "data").string() << "}\n"
                          << "flows:\n"
                          << "  - slug: count\n"
                          << "    input_schema: {type: string}\n"
                          << "    steps: [{slug: words, handler: text.count_words}]\n";
  }
};

}  // namespace

TEST_SUITE("cli_runs") {
  TEST_CASE("run starts a run, refuses bad input before writing, and --wait returns its output") {
    Scratch s;
    auto bad = s.flowreg({"run", "count", "--input", "{\"not\": \"a string\"}"});
    CHECK(bad.exit_code == 1);
    CHECK(bad.err.find("input of flow 'count': (top level): expected a string, got a mapping") !=
          std::string::npos);

    // --wait in the background; this test completes the task the way a worker would.
    auto waiting = std::async(std::launch::async, [&] {
      return s.flowreg({"run", "count", "--input", "\"three little words\"", "--wait", "--json",
                        "--timeout", "120s"});
    });
    auto cluster = flowreg::detail::EmbeddedCluster::open(s.dir / "data");
    REQUIRE(cluster);
    std::optional<flowreg::detail::RunStore> store;
    std::vector<flowreg::detail::ClaimedTask> tasks;
    for (int i = 0; i < 600 && tasks.empty(); ++i) {
      if (!store) {
        auto url = cluster->ensure_running();
        if (url) {
          auto connected = flowreg::detail::RunStore::connect(*url);
          if (connected) store = std::move(*connected);
        }
      }
      if (store) {
        auto listed = store->list_runs();
        if (listed && !listed->empty()) {
          const std::vector<flowreg::detail::FlowKey> keys{{"count", (*listed)[0].flow_version}};
          auto claimed = store->claim("test-worker", keys, 10);
          if (claimed) tasks = std::move(*claimed);
        }
      }
      if (tasks.empty()) std::this_thread::sleep_for(100ms);
    }
    REQUIRE(tasks.size() == 1);
    CHECK(tasks[0].input == "three little words");
    const std::vector<flowreg::detail::Completion> done{{tasks[0].id, tasks[0].attempt, json(3)}};
    REQUIRE(store->complete(done));
    auto result = waiting.get();
    REQUIRE_MESSAGE(result.exit_code == 0, result.err);
    const json run = json::parse(result.out);
    CHECK(run["status"] == "completed");
    CHECK(run["output"] == json{{"words", 3}});
    CHECK(run["error"].is_null());

    // Its task has left the queue; the step keeps its attempts and the worker that recorded it.
    auto shown = s.flowreg({"runs", "show", run["id"].get<std::string>(), "--json"});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    const json step = json::parse(shown.out)["steps"].at(0);
    CHECK(step["attempts"] == 1);
    CHECK(step["worker"] == "test-worker");
    auto text = s.flowreg({"runs", "show", run["id"].get<std::string>()});
    CHECK(text.out.find("attempts=1 worker=test-worker") != std::string::npos);

    // Only the good run was written.
    auto listed = s.flowreg({"runs", "list", "--json"});
    REQUIRE(listed.exit_code == 0);
    CHECK(json::parse(listed.out).size() == 1);
  }

  // --inputs: one run per line (JSON Lines), all checked before anything is written; a batch of a
  // one-step flow this size is written by COPY (RunStore::start_runs).
  TEST_CASE("run --inputs starts a run per line, all or none; a bad line is named, none starts") {
    Scratch s;
    const fs::path bad_file = s.dir / "bad.jsonl";
    std::ofstream(bad_file) << "\"one\"\n\n\"two\"\n{\"not\": \"a string\"}\n\"four\"\n[oops\n"
                            << "\"nul \\u0000 inside\"\n\"bad \xff byte\"\n";
    auto bad = s.flowreg({"run", "count", "--inputs", bad_file.string()});
    CHECK(bad.exit_code == 1);
    CAPTURE(bad.err);
    CHECK(bad.err.find("--inputs " + bad_file.string() +
                       " line 4: input of flow 'count': (top level): expected a string, got a "
                       "mapping") != std::string::npos);
    CHECK(bad.err.find("--inputs " + bad_file.string() + " line 6 is not valid JSON") !=
          std::string::npos);
    CHECK(bad.err.find("--inputs " + bad_file.string() +
                       " line 7: the input holds a string with the character U+0000") !=
          std::string::npos);
    CHECK(bad.err.find("--inputs " + bad_file.string() + " line 8 is not valid JSON") !=
          std::string::npos);
    CHECK(bad.err.find("no run started") != std::string::npos);
    auto none = s.flowreg({"run", "count", "--inputs", (s.dir / "missing.jsonl").string()});
    CHECK(none.exit_code == 1);
    CHECK(none.err.find("missing.jsonl") != std::string::npos);
    auto empty_file = s.dir / "empty.jsonl";
    std::ofstream(empty_file) << "\n  \n";
    auto empty = s.flowreg({"run", "count", "--inputs", empty_file.string()});
    CHECK(empty.exit_code == 1);
    CHECK(empty.err.find("no input") != std::string::npos);
    // Not with the options of one run.
    auto both = s.flowreg({"run", "count", "--inputs", bad_file.string(), "--wait"});
    CHECK(both.exit_code != 0);
    CHECK(both.err.find("excludes") != std::string::npos);
    auto listed = s.flowreg({"runs", "list", "--json"});
    REQUIRE_MESSAGE(listed.exit_code == 0, listed.err);
    CHECK(json::parse(listed.out).empty());

    // 70 inputs, text COPY must escape among them, and a blank line: 70 runs, ids in line order.
    const fs::path good_file = s.dir / "good.jsonl";
    {
      std::ofstream good(good_file);
      good << "\"tab\\there \\\\N back\\\\slash\"\r\n\n";
      for (int i = 1; i < 70; ++i) good << "\"run " << i << "\"\n";
    }
    auto started = s.flowreg({"run", "count", "--inputs", good_file.string(), "--json"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.err);
    const json ids = json::parse(started.out);
    REQUIRE(ids.size() == 70);
    auto first = s.flowreg({"runs", "show", ids[0].get<std::string>(), "--json"});
    REQUIRE_MESSAGE(first.exit_code == 0, first.err);
    CHECK(json::parse(first.out)["input"] == "tab\there \\N back\\slash");
    CHECK(json::parse(first.out)["status"] == "started");
    auto last = s.flowreg({"runs", "show", ids[69].get<std::string>(), "--json"});
    REQUIRE_MESSAGE(last.exit_code == 0, last.err);
    CHECK(json::parse(last.out)["input"] == "run 69");
    // From standard input, ids one per line.
    auto piped = flowreg::test::run_process({"/bin/sh", "-c",
                                             std::string("printf '\"a\"\\n\"b\"\\n' | ") +
                                                 FLOWREG_BINARY + " --config " + s.config.string() +
                                                 " run count --inputs -"});
    REQUIRE_MESSAGE(piped.exit_code == 0, piped.err);
    CHECK(std::count(piped.out.begin(), piped.out.end(), '\n') == 2);
    listed = s.flowreg({"runs", "list", "--json", "--limit", "1000"});
    REQUIRE_MESSAGE(listed.exit_code == 0, listed.err);
    CHECK(json::parse(listed.out).size() == 72);
  }

  TEST_CASE("runs list, show, cancel, retry and prune; an idempotency key returns the first run") {
    Scratch s;
    auto first =
        s.flowreg({"run", "count", "--input", "\"a b\"", "--idempotency-key", "k1", "--json"});
    REQUIRE_MESSAGE(first.exit_code == 0, first.err);
    const std::string id = json::parse(first.out)["id"];
    auto again =
        s.flowreg({"run", "count", "--input", "\"a b\"", "--idempotency-key", "k1", "--json"});
    REQUIRE(again.exit_code == 0);
    CHECK(json::parse(again.out)["id"] == id);

    auto shown = s.flowreg({"runs", "show", id, "--json"});
    REQUIRE(shown.exit_code == 0);
    const json run = json::parse(shown.out);
    CHECK(run["status"] == "started");
    REQUIRE(run["steps"].size() == 1);
    CHECK(run["steps"][0]["slug"] == "words");

    CHECK(s.flowreg({"runs", "cancel", id}).exit_code == 0);
    CHECK(s.flowreg({"runs", "cancel", id}).exit_code == 1);  // nothing left to cancel
    auto retried = s.flowreg({"runs", "retry", id});
    REQUIRE(retried.exit_code == 0);
    std::string retry_id = retried.out;
    retry_id.erase(retry_id.find_last_not_of('\n') + 1);
    auto retry = json::parse(s.flowreg({"runs", "show", retry_id, "--json"}).out);
    CHECK(retry["retry_of"] == id);
    CHECK(retry["input"] == "a b");

    auto cancelled =
        json::parse(s.flowreg({"runs", "list", "--status", "cancelled", "--json"}).out);
    REQUIRE(cancelled.size() == 1);
    auto pruned = s.flowreg({"runs", "prune", "--older-than", "0s"});
    REQUIRE(pruned.exit_code == 0);
    CHECK(pruned.out == "1 run(s) pruned\n");
    CHECK(s.flowreg({"runs", "show", id}).exit_code == 1);
    CHECK(s.flowreg({"runs", "show", "not-a-uuid"}).exit_code == 1);
  }
}
