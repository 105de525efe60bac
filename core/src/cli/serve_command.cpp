// `flowreg serve`: its options; what it runs (the HTTP API, the dashboard, a worker) is handed in
// as a ServeFunction (server/serve.hpp, through core/src/main.cpp).

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <utility>

#include "cli/commands.hpp"

namespace flowreg::cli {

namespace {

struct ServeArgs {
  std::string listen;  // "": server.listen
  bool worker = false;
};

int serve(const Globals& g, const ServeArgs& args, const ServeFunction& serve_function) {
  auto config = effective_config(g);
  if (!config) return report(config.error());
  if (!args.listen.empty()) config->server.listen = args.listen;
  auto served = serve_function(std::move(*config), args.worker, warn_plugin);
  return served ? kExitOk : report(served.error());
}

}  // namespace

void add_serve_command(CLI::App& app, const Globals& g, int& exit_code,
                       ServeFunction serve_function) {
  auto args = std::make_shared<ServeArgs>();
  auto* serve_cmd = app.add_subcommand(
      "serve", "Serve the HTTP API and the web dashboard (and, with --worker, run flows)");
  serve_cmd->add_option("--listen", args->listen,
                        "HOST:PORT to listen on (default: server.listen, 127.0.0.1:8080); anything "
                        "but loopback needs a token (server.token or FLOWREG_TOKEN)");
  serve_cmd->add_flag("--worker", args->worker,
                      "Also run a worker in this process (the worker: configuration)");
  serve_cmd->callback([&g, &exit_code, args, serve_function = std::move(serve_function)] {
    exit_code = serve(g, *args, serve_function);
  });
}

}  // namespace flowreg::cli
