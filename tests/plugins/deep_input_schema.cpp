// A flow whose input_schema is nested 5,000 levels deep (an array of arrays of ...): far past the
// nesting limit of YAML files, which a plugin's definition must obey too.
#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(deepschema) {
  using flowreg::sdk::json;
  json schema = json{{"type", "string"}};
  for (int i = 0; i < 5000; ++i) {
    json outer = json::object();
    outer["type"] = "array";
    outer["items"] = std::move(schema);
    schema = std::move(outer);
  }
  plugin.handler("noop", [](const json&) { return json(nullptr); });
  plugin.flow("deep_schema_flow").input_schema(std::move(schema)).step("only", "noop");
}
