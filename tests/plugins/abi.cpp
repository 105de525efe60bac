// Built three times with FLOWREG_SDK_MAGIC / FLOWREG_SDK_ABI_MAJOR / FLOWREG_SDK_ABI_MINOR changed.
#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(abi_fixture) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow("abi_flow").step("only", "noop");
}
