#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(hello) {
  plugin.handler("greet", [](const flowreg::sdk::json& input) {
    return flowreg::sdk::json{{"greeting", "hello " + input.value("name", std::string("world"))}};
  });
  plugin.flow("hello_flow").description("Greets").step("greet", "greet");
}
