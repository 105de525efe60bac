#pragma once
// A plugin's self-description -> flows, checked exactly like the flows of a YAML file (schema, then
// the semantic rules), so that the two ways of declaring flows cannot drift apart.

#include <nlohmann/json.hpp>
#include <string>
#include <tl/expected.hpp>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"

namespace flowreg::detail {

struct PluginDefinition {
  std::string module;
  std::vector<std::string> handlers;  // unqualified names, in index order
  std::vector<FlowDef> flows;
};

// `definition` is {"module": slug, "handlers": [name, ...], "flows": [...]}; problems are located
// at `source` (the plugin file) and name the JSON path inside the definition.
tl::expected<PluginDefinition, std::vector<Diagnostic>> parse_plugin_definition(
    const nlohmann::json& definition, const std::string& source);

}  // namespace flowreg::detail
