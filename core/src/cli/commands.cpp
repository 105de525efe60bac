#include "cli/commands.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <utility>

#include "logging/json_log.hpp"

namespace flowreg::cli {

int run(int argc, char** argv, ServeFunction serve) {
  // Logs go to stderr: stdout carries the commands' output (JSON, DOT) and nothing else.
  spdlog::set_default_logger(spdlog::stderr_color_mt("flowreg"));
  CLI::App app{"flowreg: a registry of flows loaded from plugins and YAML, and their runner"};
  app.require_subcommand(1);
  Globals g;
  app.add_option(
         "--config", g.config_file,
         "Configuration file (default: ./flowreg.yaml when present, else built-in defaults)")
      ->check(CLI::ExistingFile);
  app.add_option("--plugins", g.plugins_dir, "Plugins directory (overrides the configuration)");
  app.add_option("--log-level", g.log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.add_option("--log-format", g.log_format,
                 "text, or json: each log line a JSON object (time, level, message, worker, flow, "
                 "step, run)")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_flag("--allow-unsafe-plugins", g.allow_unsafe_plugins,
               "Load plugin files and directories that others can write or that another user owns");

  // In this order in --help.
  int exit_code = kExitOk;
  add_flows_commands(app, g, exit_code);
  add_plugins_commands(app, g, exit_code);
  add_run_command(app, g, exit_code);
  add_runs_commands(app, g, exit_code);
  add_schedules_commands(app, g, exit_code);
  add_worker_commands(app, g, exit_code);
  add_db_commands(app, g, exit_code);
  add_serve_command(app, g, exit_code, std::move(serve));

  app.parse_complete_callback([&] {
    spdlog::set_level(spdlog::level::from_str(g.log_level));
    if (g.log_format == "json") detail::logging::use_json();
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // A word that names no command ("flowreg frob", "flowreg runs frob") is left over: name it,
    // not "A subcommand is required".
    const CLI::App* at = &app;
    while (!at->get_subcommands().empty()) at = at->get_subcommands().front();
    if (at->remaining().empty() || at->get_subcommands({}).empty()) {
      app.exit(e);
      return kExitUsage;
    }
    std::string commands;
    for (const auto* sub : at->get_subcommands({}))
      commands += (commands.empty() ? "" : ", ") + sub->get_name();
    const std::string path = at == &app ? std::string("flowreg") : "flowreg " + at->get_name();
    fmt::print(stderr, "flowreg: '{}' is not a command of {} (its commands: {}); see {} --help\n",
               at->remaining().front(), path, commands, path);
    return kExitUsage;
  }
  return exit_code;
}

}  // namespace flowreg::cli
