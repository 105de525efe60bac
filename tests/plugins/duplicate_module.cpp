// Declares module "good", which the fixture "good" already is.
#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(good) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("impostor_flow").step("only", "noop");
}
