#pragma once
// `flowreg serve` once its configuration is known: the process's one flow catalogue, the database,
// the HTTP server, and with `worker` a worker in the same process that borrows that catalogue.
// The command line (cli/serve_command.cpp) parses the options and hands them here through the
// composition root (core/src/main.cpp), so that the CLI and the server never include each other.

#include "app/catalog.hpp"
#include "flowreg/config.hpp"
#include "flowreg/error.hpp"

namespace flowreg::detail {

struct ServeOptions {
  Config config;  // server.listen already overridden by --listen
  bool worker = false;
  app::PluginProblem on_plugin_problem;  // each plugin file that did not load
};

// Serves until SIGINT or SIGTERM, then stops (a worker drains for worker.shutdown_grace) and
// exits the process with status 0. Returns only the error that kept it from serving (a listen
// address or a token missing: Errc::invalid_argument; the catalogue, the database or the worker
// failing to start).
Result<void> serve(ServeOptions options);

}  // namespace flowreg::detail
