// A cycle (a -> b -> a) and a dependency on a step that does not exist.
#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(invalid) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  auto& flow = plugin.flow("broken_flow");
  flow.step("a", "noop").depends_on({"b"});
  flow.step("b", "noop").depends_on({"a"});
  flow.step("c", "noop").depends_on({"missing"});
}
