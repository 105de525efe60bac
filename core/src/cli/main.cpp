#include <cstring>

#include "cli/commands.hpp"
#include "flowreg/plugins.hpp"

int main(int argc, char** argv) {
  // The child side of plugin inspection (PluginLoader runs `flowreg __inspect FILE`): load the
  // plugin in this throw-away process, so that a crashing plugin cannot take the host down.
  if (argc == 3 && std::strcmp(argv[1], "__inspect") == 0)
    return flowreg::PluginLoader::inspect_main(argv[2]);
  return flowreg::cli::run(argc, argv);
}
