#pragma once
// A plugin's self-description -> flows, checked exactly like the flows of a YAML file: the same
// size, nesting and node limits as YAML documents (YamlLimits), the same JSON Schema, the same
// semantic rules, the same check that each input_schema is itself a valid JSON Schema. The two ways
// of declaring flows share one code path, so that they cannot drift apart.

#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <vector>

#include "config/yaml_json.hpp"
#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"

namespace flowreg::detail {

struct PluginDefinition {
  std::string module;
  std::vector<std::string> handlers;  // unqualified names, in index order
  std::vector<FlowDef> flows;
};

// `text` is the JSON the plugin described itself with: {"module": slug, "handlers": [name, ...],
// "flows": [...]}, untrusted. Its size and nesting depth are bounded before anything recursive
// runs on it. Problems are located at `source` (the plugin file) and name the JSON path inside the
// definition; a fault a YAML file can have too gets the message YAML gives for it.
tl::expected<PluginDefinition, std::vector<Diagnostic>> parse_plugin_definition(
    std::string_view text, const std::string& source, const YamlLimits& limits = {});

}  // namespace flowreg::detail
