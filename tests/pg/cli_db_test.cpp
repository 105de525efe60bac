// `flowreg db migrate|status|stop` on a cluster of its own, through the real binary.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/process.hpp"

namespace fs = std::filesystem;
using flowreg::test::run_process;

TEST_SUITE("cli_db") {
  TEST_CASE(
      "db migrate applies every migration once; status reports them; stop stops the cluster") {
    char tmpl[] = "/tmp/flowreg_cli_db_XXXXXX";
    const fs::path dir = mkdtemp(tmpl);
    // The cluster runs as `postgres` when the tests run as root: it must be able to reach the data.
    fs::permissions(dir, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    const fs::path config = dir / "flowreg.yaml";
    std::ofstream(config) << "database: {data_dir: " << (dir / "data").string() << "}\n";
    const std::string bin = FLOWREG_BINARY;
    auto db = [&](std::vector<std::string> args) {
      args.insert(args.begin(), {bin, "--config", config.string(), "db"});
      return run_process(args);
    };

    auto before = db({"status", "--json"});
    REQUIRE(before.exit_code == 0);
    CHECK(nlohmann::json::parse(before.out)["initialized"] == false);

    auto first = db({"migrate"});
    REQUIRE_MESSAGE(first.exit_code == 0, first.err);
    CHECK(first.out.find("applied 0001_init\n") != std::string::npos);
    CHECK(first.out.find("applied 0002_runs\n") != std::string::npos);
    CHECK(first.out.find("applied function work\n") != std::string::npos);
    auto second = db({"migrate"});
    REQUIRE(second.exit_code == 0);
    CHECK(second.out.find("0 migration(s) applied") != std::string::npos);
    CHECK(second.out.find("; 0 function file(s) applied") != std::string::npos);
    CHECK(second.out.find("applied function") == std::string::npos);

    auto status = db({"status", "--json"});
    REQUIRE(status.exit_code == 0);
    const auto s = nlohmann::json::parse(status.out);
    CHECK(s["running"] == true);
    REQUIRE(s["migrations"].size() >= 2);
    for (const auto& m : s["migrations"]) CHECK(m["state"] == "applied");
    REQUIRE(s["functions"].size() >= 10);
    for (const auto& f : s["functions"]) CHECK(f["state"] == "applied");
    auto text = db({"status"});
    CHECK(text.out.find("function work  applied\n") != std::string::npos);

    auto stop = db({"stop"});
    CHECK(stop.exit_code == 0);
    auto after = db({"status", "--json"});
    REQUIRE(after.exit_code == 0);
    CHECK(nlohmann::json::parse(after.out)["running"] == false);
    CHECK(nlohmann::json::parse(after.out)["migrations"].is_null());
    CHECK(nlohmann::json::parse(after.out)["functions"].is_null());

    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  TEST_CASE("db stop refuses when an external database.url is configured") {
    char tmpl[] = "/tmp/flowreg_cli_db_XXXXXX";
    const fs::path dir = mkdtemp(tmpl);
    std::ofstream(dir / "flowreg.yaml") << "database: {url: 'host=/nonexistent dbname=x'}\n";
    auto r =
        run_process({FLOWREG_BINARY, "--config", (dir / "flowreg.yaml").string(), "db", "stop"});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("only stops the embedded cluster") != std::string::npos);
    fs::remove_all(dir);
  }
}
