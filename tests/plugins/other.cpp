#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(other) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("other_flow").step("only", "noop");
}
