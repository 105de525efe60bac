#pragma once
// The `flowreg` command line: one group of commands per file, each adding its subcommands to the
// application. A command's callback sets `exit_code` (see common.hpp for the codes); `g` holds
// the global options, parsed before any callback runs. Both outlive the parse.

#include <functional>

#include "cli/common.hpp"

namespace CLI {
class App;
}

namespace flowreg::cli {

// What `flowreg serve` runs once its options are parsed: server/serve.hpp's serve(), handed in by
// the composition root (core/src/main.cpp) so that the CLI never includes the server. Returns
// only the error that kept it from serving.
using ServeFunction =
    std::function<Result<void>(Config config, bool worker, app::PluginProblem on_plugin_problem)>;

// Parses the command line and runs the command it names; returns the process exit code.
int run(int argc, char** argv, ServeFunction serve);

// One per file of the same name: flows_commands.cpp adds `flows list|show|validate`, and so on.
// `worker` and `workers` are both in worker_commands.cpp.
void add_flows_commands(CLI::App& app, const Globals& g, int& exit_code);
void add_plugins_commands(CLI::App& app, const Globals& g, int& exit_code);
void add_run_command(CLI::App& app, const Globals& g, int& exit_code);
void add_runs_commands(CLI::App& app, const Globals& g, int& exit_code);
void add_schedules_commands(CLI::App& app, const Globals& g, int& exit_code);
void add_worker_commands(CLI::App& app, const Globals& g, int& exit_code);
void add_db_commands(CLI::App& app, const Globals& g, int& exit_code);
void add_serve_command(CLI::App& app, const Globals& g, int& exit_code, ServeFunction serve);

}  // namespace flowreg::cli
