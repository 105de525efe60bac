#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "support/process.hpp"

using flowreg::test::run_process;

namespace {

const std::string kBinary = FLOWREG_BINARY;

// A scratch directory for this process, removed at exit.
struct ScratchDir {
  std::filesystem::path path;
  ScratchDir() {
    char tmpl[] = "/tmp/flowreg_cli_test_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// A copy of flows.example.yaml in a scratch directory: its data_dir (the plugin cache) is
// relative to the file, and tests never write into the sources.
std::string example_copy() {
  static const ScratchDir dir;
  const auto copy = dir.path / "flows.example.yaml";
  std::filesystem::copy_file(std::string(FLOWREG_SOURCE_DIR) + "/flows.example.yaml", copy,
                             std::filesystem::copy_options::skip_existing);
  return copy.string();
}

const std::string kExample = example_copy();
const std::string kData = FLOWREG_TEST_DATA_DIR;
// The example plugins of this build (flows.example.yaml's own plugins.dir assumes build/).
const std::string kPlugins = FLOWREG_EXAMPLE_PLUGIN_DIR;

}  // namespace

TEST_SUITE("cli") {
  TEST_CASE("flows validate exits 0 on the example") {
    auto r = run_process({kBinary, "flows", "validate", kExample});
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("ok (4 flows)") != std::string::npos);
    CHECK(r.err.empty());
  }

  TEST_CASE("flows validate exits 1 and prints PATH:LINE:COL: message for each problem") {
    auto r = run_process({kBinary, "flows", "validate", kExample, kData + "/bad_semantics.yaml"});
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("ok (4 flows)") != std::string::npos);  // the valid file is still reported
    CHECK(r.err.find(kData + "/bad_semantics.yaml:6:61: flow 'billing': step 'charge' depends on "
                             "unknown step 'fetch2'\n") != std::string::npos);
    CHECK(r.err.find("dependency cycle a -> b -> c -> a") != std::string::npos);
  }

  TEST_CASE("flows validate without a position prints PATH: message") {
    auto r = run_process({kBinary, "flows", "validate", kData + "/empty.yaml"});
    CHECK(r.exit_code == 1);
    CHECK(r.err == kData +
                       "/empty.yaml: the file is empty; expected a mapping (for example with a "
                       "'flows' key)\n");
  }

  TEST_CASE("usage errors exit 2") {
    CHECK(run_process({kBinary}).exit_code == 2);
    CHECK(run_process({kBinary, "nonsense"}).exit_code == 2);
    CHECK(run_process({kBinary, "flows"}).exit_code == 2);
    CHECK(run_process({kBinary, "flows", "list", "--bogus"}).exit_code == 2);
    CHECK(run_process({kBinary, "flows", "validate"}).exit_code == 2);
    CHECK(run_process({kBinary, "flows", "show"}).exit_code == 2);
    CHECK(run_process({kBinary, "--config", "/nonexistent.yaml", "flows", "list"}).exit_code == 2);
    CHECK(run_process({kBinary, "flows", "show", "x", "--json", "--dot"}).exit_code == 2);
  }

  TEST_CASE("a word that names no command is named in the error, with the commands there are") {
    // Regression: "A subcommand is required", which did not say that 'frob' was the problem.
    const auto top = run_process({kBinary, "frob"});
    CHECK(top.exit_code == 2);
    CHECK(top.err.find("flowreg: 'frob' is not a command of flowreg (its commands: flows,") !=
          std::string::npos);
    const auto nested = run_process({kBinary, "runs", "frob"});
    CHECK(nested.exit_code == 2);
    CHECK(nested.err.find("'frob' is not a command of flowreg runs (its commands: list,") !=
          std::string::npos);
  }

  TEST_CASE("--help works on every command and exits 0") {
    for (auto args : std::vector<std::vector<std::string>>{{"--help"},
                                                           {"flows", "--help"},
                                                           {"flows", "list", "--help"},
                                                           {"flows", "show", "--help"},
                                                           {"flows", "validate", "--help"}}) {
      args.insert(args.begin(), kBinary);
      auto r = run_process(args);
      CHECK(r.exit_code == 0);
      CHECK(r.out.find("Usage") != std::string::npos);
    }
  }

  TEST_CASE("flows list --json prints every flow with the documented fields") {
    auto r = run_process(
        {kBinary, "--config", kExample, "--plugins", kPlugins, "flows", "list", "--json"});
    REQUIRE(r.exit_code == 0);
    auto flows = nlohmann::json::parse(r.out);
    REQUIRE(flows.is_array());
    REQUIRE(flows.size() == 6);  // four YAML flows, and one of each example plugin but orders
    const auto& f = flows[3];  // sorted by slug: file_report, order_approval, order_fulfilment, ...
    CHECK(f["slug"] == "order_pipeline");
    CHECK(f["module"] == "examples");
    CHECK(f["version"].get<std::string>().size() == 16);
    CHECK(f["description"] == "Charge and ship an order");
    CHECK(f["options"]["max_attempts"] == 3);
    CHECK(f["options"]["base_delay"] == "100ms");
    CHECK(f["input_schema"]["required"][0] == "order_id");
    REQUIRE(f["steps"].size() == 4);
    CHECK(f["steps"][3] == nlohmann::json::parse(
                               R"({"slug":"ship","kind":"single","depends_on":["charge","reserve"],
                                   "handler":"orders.ship",
                                   "options":{"max_attempts":3,"base_delay":"100ms","max_delay":"2s","timeout":"30s",
                                              "priority":0},
                                   "concurrency":null,"rate_limit":null,"sleep":null,"wait":null,"when":null,
                                   "trigger":"all","flow":null,"map":false})"));
    CHECK(f["steps"][1]["options"]["max_attempts"] == 5);
    // A flow step: its child flow and map, no handler.
    const auto& approval = flows[1];
    REQUIRE(approval["slug"] == "order_approval");
    CHECK(approval["steps"][2]["kind"] == "flow");
    CHECK(approval["steps"][2]["flow"] == "order_fulfilment");
    CHECK(approval["steps"][2]["map"] == false);
    CHECK(approval["steps"][2]["handler"] == "");
  }

  TEST_CASE("flows list prints slug, module, version and steps") {
    auto r = run_process({kBinary, "--config", kExample, "--plugins", kPlugins, "flows", "list"});
    REQUIRE(r.exit_code == 0);
    CHECK(r.out.find("order_pipeline  module=examples version=") != std::string::npos);
    CHECK(r.out.find("ship     single  orders.ship  <- charge, reserve") != std::string::npos);
  }

  TEST_CASE("flows show prints one flow, as JSON or as DOT; an unknown slug exits 1") {
    auto json = run_process({kBinary, "--config", kExample, "--plugins", kPlugins, "flows", "show",
                             "word_count", "--json"});
    REQUIRE(json.exit_code == 0);
    CHECK(nlohmann::json::parse(json.out)["steps"][1]["kind"] == "map");
    auto dot = run_process({kBinary, "--config", kExample, "--plugins", kPlugins, "flows", "show",
                            "order_pipeline", "--dot"});
    REQUIRE(dot.exit_code == 0);
    CHECK(dot.out.starts_with("digraph \"order_pipeline\" {"));
    CHECK(dot.out.find("\"fetch\" -> \"charge\";") != std::string::npos);
    CHECK(dot.out.find("\"charge\" -> \"ship\";") != std::string::npos);
    auto missing = run_process(
        {kBinary, "--config", kExample, "--plugins", kPlugins, "flows", "show", "nope"});
    CHECK(missing.exit_code == 1);
    CHECK(missing.err == "flowreg: no flow with slug 'nope'\n");
  }

  TEST_CASE("an invalid --config makes every command fail with its problems") {
    auto r = run_process({kBinary, "--config", kData + "/bad_schema.yaml", "flows", "list"});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("bad_schema.yaml:1:1: unknown key 'flowz'") != std::string::npos);
    CHECK(r.out.empty());
  }

  TEST_CASE("./flowreg.yaml is the default configuration") {
    // In a scratch copy: flowreg keeps its plugin cache under ./.flowreg, never in the sources.
    char tmpl[] = "/tmp/flowreg_cli_test_XXXXXX";
    const std::filesystem::path dir = mkdtemp(tmpl);
    std::filesystem::copy_file(kData + "/default_config/flowreg.yaml", dir / "flowreg.yaml");
    auto r = run_process({kBinary, "--plugins", kPlugins, "flows", "list", "--json"}, dir.string());
    std::filesystem::remove_all(dir);
    REQUIRE(r.exit_code == 0);
    std::vector<std::string> slugs;
    for (const auto& f : nlohmann::json::parse(r.out)) slugs.push_back(f["slug"]);
    CHECK(std::find(slugs.begin(), slugs.end(), "from_default_config") != slugs.end());
  }

  TEST_CASE("a YAML flow whose handler no loaded plugin exports fails with the name and a hint") {
    auto r = run_process({kBinary, "--config", kData + "/unresolved_handler.yaml", "--plugins",
                          kPlugins, "flows", "list"});
    CHECK(r.exit_code == 1);
    CHECK(
        r.err.find("flow 'uses_typo': step 'count': handler 'text.count_wordz' is not exported by "
                   "any loaded plugin (did you mean 'text.count_words'?)") != std::string::npos);
    CHECK(r.out.empty());
  }

  TEST_CASE("flows list shows the flows of the loaded plugins beside the YAML flows") {
    auto r = run_process(
        {kBinary, "--config", kExample, "--plugins", kPlugins, "flows", "list", "--json"});
    REQUIRE(r.exit_code == 0);
    std::vector<std::string> slugs;
    for (const auto& f : nlohmann::json::parse(r.out)) slugs.push_back(f["slug"]);
    CHECK(slugs == std::vector<std::string>{"file_report", "order_approval", "order_fulfilment",
                                            "order_pipeline", "text_stats", "word_count"});
  }

  TEST_CASE(
      "regression: database.data_dir is relative to the configuration file, like plugins.dir "
      "(one file run from two directories started two clusters)") {
    const ScratchDir dir;
    const auto config = dir.path / "flowreg.yaml";
    std::ofstream(config) << "plugins: {dir: plugins}\ndatabase: {data_dir: state}\n";
    std::vector<std::string> seen;
    for (const std::string& cwd : {dir.path.string(), std::string("/")}) {
      auto r = run_process({kBinary, "--config", config.string(), "db", "status", "--json"}, cwd);
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      seen.push_back(nlohmann::json::parse(r.out)["data_dir"]);
    }
    CHECK(seen[0] == (dir.path / "state").string());
    CHECK(seen[1] == seen[0]);
  }

  TEST_CASE(
      "regression: file names that are not UTF-8 print with U+FFFD in every --json output (a "
      "plugin, a configuration file and a data directory named caf\\xE9 used to abort)") {
    const ScratchDir scratch;
    const auto dir = scratch.path / "caf\xE9";  // the configuration's directory
    std::filesystem::create_directories(dir / "plugins");
    std::filesystem::copy_file(kPlugins + "/text.so", dir / "plugins" / "caf\xE9.so");
    const auto config = dir / "flowreg.yaml";
    std::ofstream(config) << "plugins: {dir: plugins}\n"
                          << "flows: [{slug: mine, steps: [{slug: a, handler: text.sum}]}]\n";
    const std::string cafe = "caf\xEF\xBF\xBD";
    const auto flowreg = [&](std::vector<std::string> args) {
      args.insert(args.begin(), {kBinary, "--config", config.string()});
      return run_process(args);
    };

    auto plugins = flowreg({"plugins", "list", "--json"});
    REQUIRE_MESSAGE(plugins.exit_code == 0, plugins.err);
    const auto listed = nlohmann::json::parse(plugins.out);
    REQUIRE(listed.size() == 1);
    CHECK(listed[0]["status"] == "loaded");
    CHECK(listed[0]["file"] == (scratch.path / cafe / "plugins" / (cafe + ".so")).string());

    auto checked =
        flowreg({"plugins", "check", (dir / "plugins" / "caf\xE9.so").string(), "--json"});
    CHECK(checked.exit_code == 0);
    CHECK(nlohmann::json::parse(checked.out)[0]["file"].get<std::string>().find(cafe) !=
          std::string::npos);

    auto flows = flowreg({"flows", "list", "--json"});
    REQUIRE_MESSAGE(flows.exit_code == 0, flows.err);
    std::map<std::string, std::string> sources;
    for (const auto& f : nlohmann::json::parse(flows.out)) sources[f["slug"]] = f["source"];
    CHECK(sources["mine"] == (scratch.path / cafe / "flowreg.yaml").string());
    CHECK(sources["text_stats"].find(cafe + ".so") != std::string::npos);

    auto shown = flowreg({"flows", "show", "mine", "--json"});
    REQUIRE(shown.exit_code == 0);
    CHECK(nlohmann::json::parse(shown.out)["source"].get<std::string>().find(cafe) !=
          std::string::npos);

    auto status = flowreg({"db", "status", "--json"});
    REQUIRE_MESSAGE(status.exit_code == 0, status.err);
    CHECK(nlohmann::json::parse(status.out)["data_dir"] ==
          (scratch.path / cafe / ".flowreg").string());
  }

  TEST_CASE(
      "regression: a YAML file with a Latin-1 byte is refused at its line and column (it loaded, "
      "then --json output aborted)") {
    const std::string file = kData + "/latin1_description.yaml";
    auto validated = run_process({kBinary, "flows", "validate", file});
    CHECK(validated.exit_code == 1);
    CHECK(validated.err == file +
                               ":4:22: byte 0xE9 is not valid UTF-8: flowreg files are UTF-8 "
                               "(convert it, e.g. with iconv -f latin1 -t utf-8)\n");
    auto listed =
        run_process({kBinary, "--config", file, "--plugins", kPlugins, "flows", "list", "--json"});
    CHECK(listed.exit_code == 1);
    CHECK(listed.err.find(":4:22: byte 0xE9 is not valid UTF-8") != std::string::npos);
    CHECK(listed.out.empty());
  }

  TEST_CASE(
      "regression: durations of the command line state their limit, and retention has no 7-day "
      "cap (runs prune --older-than 720h was 'not a duration')") {
    const ScratchDir dir;
    const auto config = dir.path / "flowreg.yaml";
    // No server answers there: the durations are checked before anything connects.
    std::ofstream(config) << "database: {url: 'host=" << dir.path.string() << " port=1'}\n";
    const auto flowreg = [&](std::vector<std::string> args) {
      args.insert(args.begin(), {kBinary, "--config", config.string()});
      return run_process(args);
    };
    auto too_long = flowreg({"runs", "prune", "--older-than", "876601h"});
    CHECK(too_long.exit_code == 1);
    CHECK(too_long.err ==
          "flowreg: --older-than '876601h' is longer than the limit of 876600h (36525 days)\n");
    auto malformed = flowreg({"runs", "prune", "--older-than", "30 days"});
    CHECK(malformed.exit_code == 1);
    CHECK(malformed.err ==
          "flowreg: --older-than '30 days' is not a duration: write a whole number and a unit (ms, "
          "s, m, h or d), such as 250ms, 30s, 5m or 30d\n");
    // 720h passes the check and reaches the (absent) database.
    auto accepted = flowreg({"runs", "prune", "--older-than", "720h"});
    CHECK(accepted.exit_code == 1);
    CHECK(accepted.err.find("duration") == std::string::npos);
    CHECK(accepted.err.find(".s.PGSQL.1") != std::string::npos);
  }
}
