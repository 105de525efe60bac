// A flow whose input_schema is not a valid JSON Schema ("type" must be a string or a list).
#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(badschema) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("bad_schema_flow")
      .input_schema(flowreg::sdk::json{{"type", 12}})
      .step("only", "noop");
}
