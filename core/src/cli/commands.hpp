#pragma once
// The `flowreg` command line: one group of commands per file, each adding its subcommands to the
// application. A command's callback sets `exit_code` (see common.hpp for the codes); `g` holds
// the global options, parsed before any callback runs. Both outlive the parse.

#include "cli/common.hpp"

namespace CLI {
class App;
}

namespace flowreg::cli {

int run(int argc, char** argv);

void add_flows_commands(CLI::App& app, const Globals& g, int& exit_code);    // flows_commands.cpp
void add_plugins_commands(CLI::App& app, const Globals& g, int& exit_code);  // plugins_commands.cpp
void add_run_command(CLI::App& app, const Globals& g, int& exit_code);       // run_command.cpp
void add_runs_commands(CLI::App& app, const Globals& g, int& exit_code);     // runs_commands.cpp
// `worker` and `workers`
void add_worker_commands(CLI::App& app, const Globals& g, int& exit_code);  // worker_commands.cpp
void add_db_commands(CLI::App& app, const Globals& g, int& exit_code);      // db_commands.cpp

}  // namespace flowreg::cli
