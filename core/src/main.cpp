// The composition root of the `flowreg` executable: the command line (cli/) with `flowreg serve`'s
// server (server/) plugged in. The only file that sees both front ends; they share app/ and never
// include each other (tests/layers/check_layers.sh).

#include <cstring>

#include "cli/commands.hpp"
#include "flowreg/plugins.hpp"
#include "server/serve.hpp"
#include "worker/handler_process.hpp"

int main(int argc, char** argv) {
  // The child side of plugin inspection (PluginLoader runs `flowreg __inspect FILE`): load the
  // plugin in this throw-away process, so that a crashing plugin cannot take the host down.
  if (argc == 3 && std::strcmp(argv[1], "__inspect") == 0)
    return flowreg::PluginLoader::inspect_main(argv[2]);
  // A handler process of a worker (isolation: process; worker/handler_process.hpp): loads one
  // plugin and runs its handlers for that worker, one task at a time.
  if (argc >= 2 && std::strcmp(argv[1], "__handler-host") == 0)
    return flowreg::detail::handler_host_main(argc, argv);
  return flowreg::cli::run(
      argc, argv,
      [](flowreg::Config config, bool worker, flowreg::app::PluginProblem on_plugin_problem) {
        return flowreg::detail::serve({std::move(config), worker, std::move(on_plugin_problem)});
      });
}
