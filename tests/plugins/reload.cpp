// Two versions of module "reload". Version 1's handler "slow" waits until the file named in its
// input exists, so a test can keep it running while version 2 replaces it.
#include <chrono>
#include <filesystem>
#include <flowreg/sdk.hpp>
#include <fstream>
#include <thread>

using flowreg::sdk::json;

FLOWREG_PLUGIN(reload) {
  plugin.handler("slow", [](const json& input) {
    if (RELOAD_VERSION == 1 && input.contains("wait_for")) {
      if (input.contains("started"))
        std::ofstream(input["started"].get<std::string>()) << "running\n";
      const std::filesystem::path gate = input["wait_for"].get<std::string>();
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (!std::filesystem::exists(gate) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return json{{"version", RELOAD_VERSION}};
  });
  plugin.flow("reload_flow")
      .description("version " + std::to_string(RELOAD_VERSION))
      .step("only", "slow");
}
