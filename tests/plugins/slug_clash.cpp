// Declares good_flow, which the fixture "good" already registers.
#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(clash) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("clash_own_flow").step("only", "noop");
  plugin.flow("good_flow").step("only", "noop");
}
