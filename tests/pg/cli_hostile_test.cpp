// `flowreg run`, `runs ...` and `worker` through the real binary, fed what a hostile or unlucky
// user feeds them: text that is not UTF-8, input nested 100,000 levels deep, a reused idempotency
// key, a PostgreSQL restart during `run --wait`, long retention durations, and steps written in
// reverse order. Each case has a cluster of its own.
#include <doctest/doctest.h>
#include <signal.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <sstream>
#include <thread>

#include "cluster/embedded_cluster.hpp"
#include "pg/cli_scratch.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"

namespace fs = std::filesystem;
using flowreg::test::Child;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_utf8(const std::string& text) {
  try {
    (void)json(text).dump();  // the strict serializer throws on invalid UTF-8
    return true;
  } catch (const json::type_error&) {
    return false;
  }
}

// `text` inside a YAML single-quoted scalar: quotes doubled.
std::string yaml_quoted(const std::string& text) {
  std::string out;
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out;
}

struct Scratch : flowreg::pgtest::CliScratch {
  // `flows` is appended to the configuration (a `flows:` list, or nothing).
  explicit Scratch(const std::string& flows = {}, const std::string& url = {})
      : CliScratch("flowreg_cli_hostile") {
    std::ofstream(config) << "plugins: {dir: " << FLOWREG_EXAMPLE_PLUGIN_DIR << ", watch: false}\n"
                          << "database: {data_dir: " << (dir / "data").string()
                          << (url.empty() ? "" : ", url: '" + yaml_quoted(url) + "'") << "}\n"
                          << "flows:\n"
                          << "  - slug: count\n"
                          << "    steps: [{slug: words, handler: text.count_words}]\n"
                          << flows;
  }
  flowreg::detail::EmbeddedCluster cluster() const {
    auto c = flowreg::detail::EmbeddedCluster::open(dir / "data");
    REQUIRE(c);
    return *c;
  }
  // A worker on this configuration, serving once its log says so.
  Child worker() const {
    Child w = Child::spawn({FLOWREG_BINARY, "--config", config.string(), "--log-level", "info",
                            "worker", "--concurrency", "2"},
                           (dir / "worker.out").string(), (dir / "worker.err").string());
    for (int i = 0; i < 1200 && read_file(dir / "worker.err").find("serving") == std::string::npos;
         ++i) {
      REQUIRE_MESSAGE(::kill(w.pid(), 0) == 0, read_file(dir / "worker.err"));
      std::this_thread::sleep_for(100ms);
    }
    REQUIRE_MESSAGE(read_file(dir / "worker.err").find("serving") != std::string::npos,
                    read_file(dir / "worker.err"));
    return w;
  }
};

// A database `name` in SQL_ASCII (it stores any byte, as a database.url may) on the cluster of
// `boot`, started when needed; its connection string.
std::string sql_ascii_database(const Scratch& boot, const std::string& name) {
  auto url = boot.cluster().ensure_running();
  REQUIRE(url);
  pqxx::connection conn(*url);
  pqxx::nontransaction tx(conn);
  tx.exec0("CREATE DATABASE " + name +
           " TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'");
  return boot.cluster().connection_string(name);
}

}  // namespace

TEST_SUITE("cli_hostile") {
  TEST_CASE(
      "regression: a handler error naming a path that is not UTF-8 fails the run with U+FFFD "
      "(the worker used to abort and the run stalled)") {
    Scratch s;
    // The files plugin reads under FLOWREG_FILES_ROOT; its error names the missing file.
    const fs::path root = s.dir / "caf\xE9";
    fs::create_directories(root);
    REQUIRE(::setenv("FLOWREG_FILES_ROOT", root.c_str(), 1) == 0);
    Child w = s.worker();
    ::unsetenv("FLOWREG_FILES_ROOT");
    auto r = s.flowreg({"run", "file_report", "--input", R"({"path": "missing.txt"})", "--wait",
                        "--json", "--timeout", "120s"});
    CHECK_MESSAGE(r.exit_code == 1, r.err);
    const json run = json::parse(r.out);
    CHECK(run["status"] == "failed");
    const std::string error = run["error"].get<std::string>();
    CHECK(error.find("caf" + kReplacement) != std::string::npos);
    CHECK(error.find("missing.txt") != std::string::npos);
    CHECK_MESSAGE(::kill(w.pid(), 0) == 0,
                  (std::string("the worker died: ") + read_file(s.dir / "worker.err")));

    auto shown = s.flowreg({"runs", "show", run["id"].get<std::string>(), "--json"});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    CHECK(json::parse(shown.out)["steps"][0]["error"].get<std::string>().find(
              "caf" + kReplacement) != std::string::npos);
  }

  TEST_CASE(
      "regression: rows that are not UTF-8 (a SQL_ASCII database) read back with U+FFFD in runs "
      "show and runs list (the CLI used to abort)") {
    Scratch boot;
    const std::string latin_url = sql_ascii_database(boot, "latin");
    Scratch s({}, latin_url);
    auto started = s.flowreg({"run", "count", "--input", "\"a b\"", "--json"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.err);
    const std::string id = json::parse(started.out)["id"];
    {
      // SQL_ASCII stores any byte: an error and an output carrying a Latin-1 0xE9.
      pqxx::connection conn(latin_url);
      pqxx::nontransaction tx(conn);
      tx.exec_params0(
          "UPDATE flowreg.runs SET status = 'failed', error = $2, output = $3::jsonb,"
          " finished_at = now() WHERE id = $1::uuid",
          id, std::string("caf\xE9 error"), std::string("{\"words\": \"caf\xE9\"}"));
    }
    auto shown = s.flowreg({"runs", "show", id, "--json"});
    REQUIRE_MESSAGE(shown.exit_code == 0, shown.err);
    const json run = json::parse(shown.out);
    CHECK(run["error"] == "caf" + kReplacement + " error");
    CHECK(run["output"]["words"] == "caf" + kReplacement);
    // The one step of a one-step flow's run is stored in the run's row: its error is the run's.
    CHECK(run["steps"][0]["error"] == "caf" + kReplacement + " error");
    auto listed = s.flowreg({"runs", "list", "--json"});
    REQUIRE_MESSAGE(listed.exit_code == 0, listed.err);
    CHECK(json::parse(listed.out)[0]["error"] == "caf" + kReplacement + " error");
    auto text = s.flowreg({"runs", "show", id});
    CHECK(text.exit_code == 0);
    CHECK(is_utf8(text.out));
  }

  TEST_CASE(
      "recorded migrations and function files that are not UTF-8 (a SQL_ASCII database) read "
      "back with U+FFFD in db status") {
    Scratch boot;
    const std::string latin_url = sql_ascii_database(boot, "latin_status");
    Scratch s({}, latin_url);
    auto migrated = s.flowreg({"db", "migrate"});
    REQUIRE_MESSAGE(migrated.exit_code == 0, migrated.err);
    {
      pqxx::connection conn(latin_url);
      pqxx::nontransaction tx(conn);
      tx.exec_params0("INSERT INTO public.flowreg_functions (name, checksum) VALUES ($1, 'x')",
                      std::string("caf\xE9"));
      tx.exec_params0(
          "INSERT INTO public.flowreg_migrations (version, name, checksum) VALUES (9999, $1, 'x')",
          std::string("caf\xE9"));
    }
    auto status = s.flowreg({"db", "status", "--json"});
    REQUIRE_MESSAGE(status.exit_code == 0, status.err);
    const json parsed = json::parse(status.out);
    bool function_seen = false, migration_seen = false;
    for (const auto& f : parsed["functions"])
      if (f["name"] == "caf" + kReplacement) function_seen = f["state"] == "unknown";
    for (const auto& m : parsed["migrations"])
      if (m["name"] == "caf" + kReplacement) migration_seen = m["state"] == "unknown";
    CHECK(function_seen);
    CHECK(migration_seen);
    auto text = s.flowreg({"db", "status"});
    CHECK(text.exit_code == 0);
    CHECK(is_utf8(text.out));
    CHECK(text.out.find("function caf" + kReplacement + "  unknown\n") != std::string::npos);
  }

  TEST_CASE(
      "regression: --input nested 100,000 levels deep is refused with the nesting limit "
      "(flowreg run used to crash)") {
    Scratch s;
    const fs::path deep = s.dir / "deep.json";
    std::ofstream(deep) << std::string(100'000, '[') << std::string(100'000, ']');
    auto r = s.flowreg({"run", "count", "--input", "@" + deep.string()});
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.err.find("--input nests deeper than 64 levels") != std::string::npos, r.err);
    // Nothing was written.
    auto listed = s.flowreg({"runs", "list", "--json"});
    REQUIRE_MESSAGE(listed.exit_code == 0, listed.err);
    CHECK(json::parse(listed.out).empty());
    // 64 levels are still fine.
    auto ok = s.flowreg(
        {"run", "count", "--input", std::string(63, '[') + "\"a\"" + std::string(63, ']')});
    CHECK_MESSAGE(ok.exit_code == 0, ok.err);
  }

  TEST_CASE(
      "regression: an idempotency key reused with a different input is refused with a conflict "
      "that shows both inputs (it used to return the first run)") {
    Scratch s;
    auto first =
        s.flowreg({"run", "count", "--input", "\"a b\"", "--idempotency-key", "k1", "--json"});
    REQUIRE_MESSAGE(first.exit_code == 0, first.err);
    const std::string id = json::parse(first.out)["id"];

    auto same =
        s.flowreg({"run", "count", "--input", " \"a b\" ", "--idempotency-key", "k1", "--json"});
    REQUIRE_MESSAGE(same.exit_code == 0, same.err);
    CHECK(json::parse(same.out)["id"] == id);

    auto other = s.flowreg({"run", "count", "--input", "\"c d\"", "--idempotency-key", "k1"});
    CHECK(other.exit_code == 1);
    CHECK_MESSAGE(other.err.find("idempotency key 'k1'") != std::string::npos, other.err);
    CHECK(other.err.find(id) != std::string::npos);
    CHECK(other.err.find("\"a b\"") != std::string::npos);
    CHECK(other.err.find("\"c d\"") != std::string::npos);
    CHECK(other.err.ends_with("\n"));

    // Large inputs are shown by digest.
    const std::string big_a = json(std::string(5000, 'a')).dump();
    const std::string big_b = json(std::string(5000, 'b')).dump();
    REQUIRE(s.flowreg({"run", "count", "--input", big_a, "--idempotency-key", "k2"}).exit_code ==
            0);
    auto big = s.flowreg({"run", "count", "--input", big_b, "--idempotency-key", "k2"});
    CHECK(big.exit_code == 1);
    CHECK_MESSAGE(big.err.find("sha256 ") != std::string::npos, big.err);
    CHECK(big.err.size() < 2000);

    auto listed = s.flowreg({"runs", "list", "--json"});
    REQUIRE(listed.exit_code == 0);
    CHECK(json::parse(listed.out).size() == 2);
  }

  TEST_CASE(
      "regression: run --wait keeps waiting across a PostgreSQL restart (it used to exit 1)") {
    Scratch s;
    auto waiting = std::async(std::launch::async, [&] {
      return s.flowreg(
          {"run", "count", "--input", "\"one two\"", "--wait", "--json", "--timeout", "300s"});
    });
    auto cluster = s.cluster();
    std::string version;
    for (int i = 0; i < 1200 && version.empty(); ++i) {
      if (auto url = cluster.ensure_running())
        if (auto store = flowreg::detail::RunStore::connect(*url))
          if (auto listed = store->list_runs(); listed && !listed->empty())
            version = (*listed)[0].flow_version;
      if (version.empty()) std::this_thread::sleep_for(100ms);
    }
    REQUIRE(!version.empty());
    std::this_thread::sleep_for(500ms);  // run --wait is waiting now
    REQUIRE(cluster.stop());
    // Down long enough for the waiting command to notice (it looks at least once a second).
    std::this_thread::sleep_for(3s);
    auto url = cluster.ensure_running();
    REQUIRE(url);
    auto store = flowreg::detail::RunStore::connect(*url);
    REQUIRE(store);
    const std::vector<flowreg::detail::FlowKey> keys{{"count", version}};
    auto claimed = store->claim("test-worker", keys, 10);
    REQUIRE(claimed);
    REQUIRE(claimed->size() == 1);
    const std::vector<flowreg::detail::Completion> done{
        {(*claimed)[0].id, (*claimed)[0].attempt, json(2)}};
    REQUIRE(store->complete(done));
    auto result = waiting.get();
    REQUIRE_MESSAGE(result.exit_code == 0, result.err);
    CHECK(json::parse(result.out)["status"] == "completed");
    CHECK(result.err.find("reconnect") != std::string::npos);
  }

  TEST_CASE("regression: runs prune accepts retention durations over 7 days (720h was refused)") {
    Scratch s;
    auto started = s.flowreg({"run", "count", "--input", "\"a\"", "--json"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.err);
    REQUIRE(s.flowreg({"runs", "cancel", json::parse(started.out)["id"]}).exit_code == 0);
    auto pruned = s.flowreg({"runs", "prune", "--older-than", "720h"});
    CHECK_MESSAGE(pruned.exit_code == 0, pruned.err);
    CHECK(pruned.out == "0 run(s) pruned\n");  // cancelled just now: younger than 30 days
    auto all = s.flowreg({"runs", "prune", "--older-than", "876600h"});
    CHECK_MESSAGE(all.exit_code == 0, all.err);
    auto now = s.flowreg({"runs", "prune", "--older-than", "0ms"});
    CHECK(now.out == "1 run(s) pruned\n");
  }

  TEST_CASE(
      "regression: a YAML flow whose steps precede their dependencies runs to completion on a "
      "worker (it used to fail at run: 'not declared before it')") {
    std::ifstream fixture(std::string(FLOWREG_TEST_DATA_DIR) + "/reversed_steps.yaml");
    std::stringstream text;
    text << fixture.rdbuf();
    std::string flows = text.str();
    flows = flows.substr(flows.find("flows:\n") + 7);  // the list, under our own `flows:`
    Scratch s(flows);
    REQUIRE(s.flowreg({"flows", "show", "reversed"}).exit_code == 0);
    Child w = s.worker();
    auto r = s.flowreg({"run", "reversed", "--input", R"({"text": "one two\nthree"})", "--wait",
                        "--json", "--timeout", "120s"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const json run = json::parse(r.out);
    CHECK(run["status"] == "completed");
    CHECK(run["output"] == json{{"total", 3}});
    auto shown = json::parse(s.flowreg({"runs", "show", run["id"], "--json"}).out);
    std::vector<std::string> order;
    for (const auto& step : shown["steps"]) order.push_back(step["slug"]);
    CHECK(order == std::vector<std::string>{"split", "count", "total"});
  }
}
