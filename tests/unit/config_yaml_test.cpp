#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "config/yaml_json.hpp"
#include "flowreg/config.hpp"
#include "support/config_problems.hpp"
#include "support/result_text.hpp"

using namespace flowreg;
using flowreg::test::problems_of_text;
namespace fs = std::filesystem;

namespace {

const fs::path kData = FLOWREG_TEST_DATA_DIR;

// The formatted problems of loading `file`; empty when it loads.
std::vector<std::string> problems_of(const fs::path& file) {
  auto config = load_config(file);
  std::vector<std::string> out;
  if (config) return out;
  for (const auto& d : config.error().details) out.push_back(d.format());
  if (out.empty()) out.push_back(config.error().message);
  return out;
}

}  // namespace

TEST_SUITE("config") {
  TEST_CASE("the example configuration loads with its four flows and settings") {
    auto config = load_config(fs::path(FLOWREG_SOURCE_DIR) / "flows.example.yaml");
    REQUIRE_MESSAGE(config, flowreg::testing::failure_text(config));
    CHECK(config->module == "examples");
    REQUIRE(config->flows.size() == 4);
    CHECK(config->flows[0].slug == "word_count");
    CHECK(config->flows[0].steps[1].kind == StepKind::map);
    CHECK(config->flows[1].slug == "order_pipeline");
    CHECK(config->flows[1].find_step("charge")->options.max_attempts == 5);
    CHECK(config->flows[1].options.base_delay == Millis{100});
    // Durable waiting: a wait for a signal with a timeout, a child flow (with map: false) whose
    // flow sleeps 2 s.
    CHECK(config->flows[2].slug == "order_approval");
    REQUIRE(config->flows[2].find_step("approve") != nullptr);
    CHECK(config->flows[2].find_step("approve")->wait->signal == "approve");
    CHECK(config->flows[2].find_step("approve")->wait->timeout == Millis{24 * 3600 * 1000});
    REQUIRE(config->flows[2].find_step("fulfil") != nullptr);
    CHECK(config->flows[2].find_step("fulfil")->kind == StepKind::flow);
    CHECK(config->flows[2].find_step("fulfil")->child == Child{"order_fulfilment", false});
    CHECK(config->flows[3].slug == "order_fulfilment");
    CHECK(config->flows[3].find_step("settle")->sleep->duration == Millis{2000});
    CHECK(config->plugins.dir == fs::path(FLOWREG_SOURCE_DIR) / "build/plugins");
    CHECK(config->worker.batch_size == 32);
    CHECK(config->database.url.empty());
  }

  TEST_CASE("an empty file is an error, not an empty configuration") {
    CHECK(problems_of(kData / "empty.yaml") ==
          std::vector<std::string>{(kData / "empty.yaml").string() +
                                   ": the file is empty; expected a mapping (for example with a "
                                   "'flows' key)"});
    CHECK(problems_of(kData / "comment_only.yaml").size() == 1);
  }

  TEST_CASE("a document that is not a mapping is refused at its position") {
    const auto p = problems_of(kData / "not_mapping.yaml");
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("not_mapping.yaml:1:1: expected a mapping at the top level") !=
          std::string::npos);
  }

  TEST_CASE("duplicate keys are refused, naming both lines") {
    const auto p = problems_of(kData / "duplicate_key.yaml");
    REQUIRE(p.size() == 1);
    CHECK(p[0].ends_with("duplicate_key.yaml:4:5: duplicate key 'slug' (first at line 2)"));
  }

  TEST_CASE("nesting deeper than the limit is refused") {
    const auto p = problems_of(kData / "deep_nesting.yaml");
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("nesting is deeper than 64 levels") != std::string::npos);
  }

  TEST_CASE("aliases that expand exponentially are refused without expanding them") {
    const auto started = std::chrono::steady_clock::now();
    const auto p = problems_of(kData / "alias_bomb.yaml");
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("more than 200000 nodes once its aliases are expanded") != std::string::npos);
    // Not a timing assertion: 10^12 nodes could not be walked at all; this documents the scale.
    MESSAGE("refused in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()
            << " s");
  }

  TEST_CASE(
      "a long key over many values, or a long value aliased many times, is refused before it "
      "grows without bound") {
    // Each value is indexed by its path, which repeats every key above it: a 3 MB key over 190,000
    // values (a 3.4 MB file, inside the size and node limits) asked for about 570 GB, and
    // aborted with std::bad_alloc. Aliases of a long scalar copy it once per alias.
    std::string long_key = "flows:\n  - slug: a\n    steps: []\n    x:\n      ? " +
                           std::string(100'000, 'k') + "\n      : [";
    for (int i = 0; i < 1'000; ++i) long_key += "1, ";
    long_key += "1]\n";
    auto p = problems_of_text(long_key);
    REQUIRE(p.size() == 1);
    CHECK(p[0].starts_with("inline.yaml:"));
    CHECK(p[0].ends_with(
        "the document grows past 64 MiB once its aliases are expanded and each value is indexed "
        "by its path; refusing it (a long key over many values, or a long value aliased many "
        "times?)"));

    std::string aliased = "flows:\n  - slug: a\n    description: &d " +
                          std::string(1'000'000, 'd') + "\n    steps: []\n    x: [";
    for (int i = 0; i < 100; ++i) aliased += "*d, ";
    aliased += "*d]\n";
    p = problems_of_text(aliased);
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("the document grows past 64 MiB") != std::string::npos);

    // Under the bound, the same shapes are read (and fail only on what they say).
    std::string fine = "flows:\n  - slug: a\n    description: &d " + std::string(100'000, 'd') +
                       "\n    x: [*d, *d, *d]\n    steps: [{slug: s, handler: m.s}]\n";
    p = problems_of_text(fine);
    REQUIRE(p.size() == 2);
    CHECK(
        p[0].ends_with("flows[0].description: String should be no more than 4096 characters in "
                       "length."));
    CHECK(p[1].find("unknown key 'x'") != std::string::npos);
  }

  TEST_CASE("a few harmless aliases are accepted") {
    const auto p = problems_of_text(R"(
defaults: &defaults {max_attempts: 2}
)");
    // 'defaults' is not a known key: aliases are parsed, the unknown key is what fails.
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("unknown key 'defaults'") != std::string::npos);
    auto ok = parse_config(R"(
flows:
  - slug: a
    options: &opts {max_attempts: 2}
    steps:
      - {slug: s, handler: m.s, options: *opts}
)",
                           "inline.yaml");
    REQUIRE_MESSAGE(ok, flowreg::testing::failure_text(ok));
    CHECK(ok->flows[0].steps[0].options.max_attempts == 2);
  }

  TEST_CASE("a file over the size limit is refused before it is parsed") {
    const fs::path big = fs::temp_directory_path() / "flowreg_oversized_test.yaml";
    {
      std::ofstream out(big);
      const std::string line = "#" + std::string(1023, 'x') + "\n";
      for (int i = 0; i < 4 * 1024 + 1; ++i) out << line;
    }
    const auto p = problems_of(big);
    fs::remove(big);
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("bytes; the limit is 4194304 bytes") != std::string::npos);
  }

  TEST_CASE("invalid YAML syntax is reported with its position") {
    const auto p = problems_of(kData / "invalid_yaml.yaml");
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("invalid_yaml.yaml:3:4: invalid YAML:") != std::string::npos);
  }

  TEST_CASE("several YAML documents in one file are refused") {
    const auto p = problems_of(kData / "two_documents.yaml");
    REQUIRE(p.size() == 1);
    CHECK(p[0].find("holds 2 YAML documents") != std::string::npos);
  }

  TEST_CASE("a missing file, a directory and a FIFO are refused without blocking") {
    CHECK(problems_of(kData / "no_such_file.yaml")[0].ends_with("cannot read: no such file"));
    CHECK(problems_of(kData)[0].ends_with("cannot read: not a regular file"));
    const fs::path fifo = fs::temp_directory_path() / "flowreg_fifo_test.yaml";
    fs::remove(fifo);
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(problems_of(fifo)[0].ends_with("cannot read: not a regular file"));
    fs::remove(fifo);
  }

  TEST_CASE("semantic problems carry file:line:column of the offending value") {
    const auto p = problems_of(kData / "bad_semantics.yaml");
    const std::string f = (kData / "bad_semantics.yaml").string();
    const std::vector<std::string> expected{
        f + ":3:32: flow 'billing': max_delay 1s is shorter than base_delay 10s",
        f + ":6:61: flow 'billing': step 'charge' depends on unknown step 'fetch2'",
        f + ":7:33: flow 'billing': dependency cycle a -> b -> c -> a",
        f + ":10:52: flow 'billing': step 'self' depends on itself",
        f + ":11:48: flow 'billing': map step 'fan' has 2 dependencies (fetch, a); a map step "
            "takes at most one",
        f + ":12:10: flow 'billing': step slug 'fetch' is used twice (steps 1 and 8)",
    };
    CHECK(p == expected);
  }

  TEST_CASE("YAML scalars are typed by the core schema; quoted values stay strings") {
    auto typed =
        detail::parse_yaml("a: 12\nb: '12'\nc: true\nd: ~\ne: 1.5\nf: 0x1f\ng: yes\n", "t.yaml");
    REQUIRE(typed);
    CHECK(typed->value["a"] == 12);
    CHECK(typed->value["b"] == "12");
    CHECK(typed->value["c"] == true);
    CHECK(typed->value["d"].is_null());
    CHECK(typed->value["e"] == 1.5);
    CHECK(typed->value["f"] == 31);
    CHECK(typed->value["g"] == "yes");  // YAML 1.2: only true/false are booleans
    CHECK(typed->locate("/b").format() == "t.yaml:2:1");
  }

  TEST_CASE("two flows with one slug in the same file are refused") {
    const auto p = problems_of_text(R"(
flows:
  - {slug: a, steps: [{slug: s, handler: m.s}]}
  - {slug: a, steps: [{slug: s, handler: m.s}]}
)");
    REQUIRE(p.size() == 1);
    CHECK(p[0] ==
          "inline.yaml:4:6: flow slug 'a' is declared twice in this file (flows[0] and flows[1])");
  }

  TEST_CASE("an input_schema that is not a valid JSON Schema is refused") {
    const auto p = problems_of_text(R"(
flows:
  - slug: a
    input_schema: {type: 12}
    steps: [{slug: s, handler: m.s}]
)");
    REQUIRE(p.size() == 1);
    CHECK(p[0].starts_with("inline.yaml:4:5: flow 'a': input_schema: invalid JSON Schema"));
  }

  TEST_CASE("the module name defaults to a cleaned-up file name") {
    CHECK(module_name_for_file("flows.example.yaml") == "flows");
    CHECK(module_name_for_file("/x/My-Flows.yaml") == "my_flows");
    CHECK(module_name_for_file("2024.yaml") == "m_2024");
    auto config = parse_config("flows: []\n", "/tmp/Billing-Flows.yaml");
    REQUIRE(config);
    CHECK(config->module == "billing_flows");
  }
}

TEST_SUITE("config") {
  TEST_CASE("regression: the error message counts the problems it carries") {
    // The count was once read after the problems had been moved into the error.
    auto config =
        parse_config("flows: [{slug: a, steps: [{slug: s, handler: m.s, depends_on: [x, y]}]}]\n",
                     "inline.yaml");
    REQUIRE_FALSE(config);
    CHECK(config.error().details.size() == 2);
    CHECK(config.error().message == "inline.yaml: 2 problems");
  }
}

TEST_SUITE("config") {
  TEST_CASE(
      "regression: a character cut at the end of the file is refused at its place (the error "
      "message read one byte past the text; found by fuzz_flow_yaml)") {
    // "\xEF\xBF" is the start of U+FFFD itself: repairing the text appends the missing byte, so
    // comparing the repaired text with the input found no difference inside the input.
    for (const char* text : {"flows: []\n#\xEF\xBF", "a: \xE2\x82"}) {
      auto config = parse_config(text, "cut.yaml");
      REQUIRE_FALSE(config);
      REQUIRE(config.error().details.size() == 1);
      CHECK(config.error().details[0].format().find("is not valid UTF-8") != std::string::npos);
    }
    auto config = parse_config(std::string("flows: []\n#\xEF\xBF"), "cut.yaml");
    CHECK(config.error().details[0].format().starts_with("cut.yaml:2:2: byte 0xEF"));
  }
}

TEST_SUITE("config") {
  TEST_CASE("database.listen: its addresses, networks and certificate paths are read") {
    auto config = parse_config(R"(
database:
  listen:
    addresses: [10.0.0.5, "::1"]
    port: 6543
    allow: [10.0.0.0/24, "fd00::/64"]
    ssl_cert_file: tls/server.crt
    ssl_key_file: tls/server.key
)",
                               "/etc/flowreg/flowreg.yaml");
    REQUIRE(config);
    const auto& listen = config->database.listen;
    CHECK(listen.enabled());
    CHECK(listen.addresses == std::vector<std::string>{"10.0.0.5", "::1"});
    CHECK(listen.port == 6543);
    CHECK(listen.allow == std::vector<std::string>{"10.0.0.0/24", "fd00::/64"});
    CHECK(listen.ssl_cert_file == fs::path("/etc/flowreg/tls/server.crt"));
    CHECK(listen.ssl_key_file == fs::path("/etc/flowreg/tls/server.key"));
    auto plain = parse_config("flows: []\n", "inline.yaml");
    REQUIRE(plain);
    CHECK_FALSE(plain->database.listen.enabled());
  }

  TEST_CASE("database.listen: a bad address, a bad network or a lone certificate is refused") {
    const auto problems = problems_of_text(R"(
database:
  listen:
    addresses: [10.0.0.5, "10.0.0.256", host.example]
    allow: [10.0.0.0/33, 10.1.0.0, "10.2.0.0/x"]
    ssl_cert_file: server.crt
)");
    CHECK(problems == std::vector<std::string>{
                          "inline.yaml:3:3: ssl_cert_file and ssl_key_file go together: give both "
                          "or neither",
                          "inline.yaml:4:27: '10.0.0.256' is not an IP address (nor '*')",
                          "inline.yaml:4:41: 'host.example' is not an IP address (nor '*')",
                          "inline.yaml:5:13: '10.0.0.0/33' is not a network (address/prefix, such "
                          "as 10.0.0.0/24)",
                          "inline.yaml:5:26: '10.1.0.0' is not a network (address/prefix, such as "
                          "10.0.0.0/24)",
                          "inline.yaml:5:36: '10.2.0.0/x' is not a network (address/prefix, such "
                          "as 10.0.0.0/24)"});
    // Without the networks that may connect, nothing listens.
    CHECK_FALSE(problems_of_text("database: {listen: {addresses: ['*']}}\n").empty());
  }
}
