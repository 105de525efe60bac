// A plugin's definition gets exactly the checks and limits of a YAML flow file, with the same
// messages: the same JSON Schema, semantic rules, input_schema a valid JSON Schema, size, nesting
// and node limits.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "config/definition.hpp"
#include "flowreg/config.hpp"
#include "flowreg/plugins.hpp"
#include "unit/plugin_sandbox.hpp"

using namespace flowreg;
using flowreg::test::Sandbox;
namespace fs = std::filesystem;

namespace {

// The problems YAML reports for `text`, as messages without their location.
std::vector<std::string> yaml_problems(const std::string& text) {
  auto config = parse_config(text, "inline.yaml");
  std::vector<std::string> out;
  if (!config)
    for (const auto& d : config.error().details) out.push_back(d.message);
  return out;
}

std::vector<std::string> definition_problems(const std::string& text) {
  auto definition = detail::parse_plugin_definition(text, "plugin.so");
  std::vector<std::string> out;
  if (!definition)
    for (const auto& d : definition.error()) out.push_back(d.message);
  return out;
}

// A schema {"type": "array", "items": {...}} nested `levels` deep, as JSON (also valid YAML).
std::string nested_schema(int levels) {
  std::string text = R"({"type": "string"})";
  for (int i = 0; i < levels; ++i) text = R"({"type": "array", "items": )" + text + "}";
  return text;
}

// The same flow with `schema` as its input_schema, as a plugin's definition and as a YAML file.
std::string definition_with(const std::string& schema) {
  return R"({"module": "m", "handlers": ["noop"], "flows": [{"slug": "f", "input_schema": )" +
         schema + R"(, "steps": [{"slug": "only", "handler": "m.noop"}]}]})";
}
std::string yaml_with(const std::string& schema) {
  return "module: m\nflows:\n  - slug: f\n    input_schema: " + schema +
         "\n    steps: [{slug: only, handler: m.noop}]\n";
}

// Scans `fixture` beside the good plugin and checks what a rejected definition shows: the file is
// rejected at stage definition and its flow `slug` is not registered. Returns the file's status.
PluginInfo scan_rejected_definition(Sandbox& box, const std::string& fixture,
                                    const std::string& slug) {
  const PluginInfo info = box.info_of(box.scan_beside_good(fixture));
  CHECK(info.status == PluginStatus::rejected);
  REQUIRE(info.error);
  CHECK(info.error->stage == PluginStage::definition);
  CHECK_FALSE(box.registry.get(slug));
  return info;
}

}  // namespace

TEST_SUITE("plugin_definition") {
  TEST_CASE(
      "regression: a plugin's input_schema that is not a JSON Schema loaded; it is rejected "
      "at stage definition with the message YAML gives") {
    Sandbox box;
    const PluginInfo info = scan_rejected_definition(box, "bad_input_schema", "bad_schema_flow");
    CHECK(box.info_of(box.dir / "good.so").status == PluginStatus::loaded);

    const auto yaml = yaml_problems(R"(
module: badschema
flows:
  - slug: bad_schema_flow
    input_schema: {type: 12}
    steps: [{slug: only, handler: badschema.noop}]
)");
    REQUIRE(yaml.size() == 1);
    CHECK(yaml[0].starts_with("flow 'bad_schema_flow': input_schema: invalid JSON Schema"));
    CHECK(info.error->message == "its definition is invalid: " + yaml[0]);
  }

  TEST_CASE(
      "regression: a plugin's input_schema nested 5,000 deep loaded; it is rejected at stage "
      "definition with YAML's nesting message") {
    Sandbox box;
    const PluginInfo info = scan_rejected_definition(box, "deep_input_schema", "deep_schema_flow");

    const auto yaml = yaml_problems(yaml_with(nested_schema(5000)));
    REQUIRE(yaml.size() == 1);
    CHECK(yaml[0] == "nesting is deeper than 64 levels");
    CHECK(info.error->message == "its definition is invalid: " + yaml[0]);
  }

  TEST_CASE("a definition and a YAML file have the same nesting limit, to the level") {
    // The innermost "type" sits at depth 4 + levels (root, flows, flow, input_schema, one "items"
    // per level, then "type"): 60 levels reach depth 64, the limit; 61 go past it.
    for (const int levels : {59, 60, 61, 70}) {
      CAPTURE(levels);
      const auto yaml = yaml_problems(yaml_with(nested_schema(levels)));
      const auto plugin = definition_problems(definition_with(nested_schema(levels)));
      CHECK(yaml == plugin);
      CHECK(plugin.empty() == (levels <= 60));
    }
  }

  TEST_CASE("a definition nested 1,000,000 deep is refused from its text, without recursion") {
    // 2 MB, under the size limit: the nesting limit is what refuses it, before any recursive walk.
    const std::string text = std::string(1'000'000, '[') + std::string(1'000'000, ']');
    CHECK(definition_problems(text) ==
          std::vector<std::string>{"nesting is deeper than 64 levels"});
    // Brackets inside strings do not count.
    const std::string in_strings =
        R"({"module": "m", "flows": [], "x": ")" + std::string(100, '[') + R"(\"]"})";
    CHECK(definition_problems(in_strings) == std::vector<std::string>{});
  }

  TEST_CASE(
      "a definition over the size or node limit, with duplicate keys, or not JSON is refused") {
    detail::YamlLimits small;
    small.max_file_bytes = 100;
    auto big = detail::parse_plugin_definition(definition_with(nested_schema(3)), "p.so", small);
    REQUIRE_FALSE(big);
    CHECK(big.error()[0].message.find("the limit is 100 bytes") != std::string::npos);
    detail::YamlLimits few;
    few.max_nodes = 10;
    auto many = detail::parse_plugin_definition(definition_with(nested_schema(3)), "p.so", few);
    REQUIRE_FALSE(many);
    CHECK(many.error()[0].message == "the definition has more than 10 nodes; refusing it");
    CHECK(definition_problems(R"({"module": "m", "module": "n", "flows": []})") ==
          std::vector<std::string>{"duplicate key 'module'"});
    const auto garbage = definition_problems("{\"module\": \"\xe9\"}");
    REQUIRE(garbage.size() == 1);
    CHECK(garbage[0].starts_with("invalid JSON: "));
  }

  TEST_CASE("a flow slug declared twice in one definition is refused as in YAML") {
    const std::string flow = R"({"slug": "f", "steps": [{"slug": "s", "handler": "m.noop"}]})";
    const auto plugin = definition_problems(R"({"module": "m", "handlers": ["noop"], "flows": [)" +
                                            flow + ", " + flow + "]}");
    const auto yaml = yaml_problems(
        "module: m\nflows:\n  - {slug: f, steps: [{slug: s, handler: m.noop}]}\n"
        "  - {slug: f, steps: [{slug: s, handler: m.noop}]}\n");
    REQUIRE(yaml.size() == 1);
    CHECK(plugin == yaml);
  }
}
