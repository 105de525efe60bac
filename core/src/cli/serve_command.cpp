// `flowreg serve`: the HTTP API and the web dashboard (server/server.hpp), optionally with a
// worker in the same process.

#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "metrics/store_metrics.hpp"
#include "server/server.hpp"
#include "worker/worker.hpp"

namespace flowreg::cli {

namespace {

struct ServeArgs {
  std::string listen;  // "": server.listen
  bool worker = false;
};

int serve(const Globals& g, const ServeArgs& args) {
  auto config = effective_config(g);
  if (!config) return report(config.error());
  if (!args.listen.empty()) config->server.listen = args.listen;
  // Checked before anything starts: a bad address or a missing token is a usage problem.
  if (auto plan = detail::plan_listen(config->server); !plan) return report(plan.error());

  auto catalog = load_catalog(*config, detail::UnresolvedHandlers::accept);
  if (!catalog) return report(catalog.error());
  if (config->plugins.watch)
    if (auto watching = catalog->loader->watch(); !watching)
      spdlog::warn("not watching {} for new plugins: {}", config->plugins.dir.string(),
                   watching.error().format());
  auto db = open_database(*config);
  if (!db) return report(db.error());

  // Signals are taken synchronously by this thread; threads started from here inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // /metrics: this process's metrics (its worker's with --worker), and runs and tasks read from
  // the store at scrape time.
  const detail::metrics::StoreMetrics store_metrics(db->url);

  detail::ServerOptions options;
  options.settings = config->server;
  options.conninfo = db->url;
  options.registry = catalog->registry.get();
  PluginLoader* loader = catalog->loader.get();
  options.plugins = [loader] { return loader->plugins(); };
  auto server = detail::HttpServer::start(std::move(options));
  if (!server) return report(server.error());
  const std::string& host = (*server)->host();
  fmt::print(stderr, "flowreg serve: listening on http://{}:{}/\n",
             host.find(':') != std::string::npos ? "[" + host + "]" : host, (*server)->port());
  std::fflush(stderr);

  std::unique_ptr<detail::Worker> worker;
  if (args.worker) {
    detail::WorkerOptions w;
    w.conninfo = db->url;
    w.concurrency = config->worker.concurrency;
    w.batch_size = config->worker.batch_size;
    w.flows = config->worker.flows;
    w.lease = config->worker.lease;
    w.poll_interval = config->worker.poll_interval;
    w.max_output_bytes = static_cast<std::size_t>(config->worker.max_output_bytes);
    std::error_code ec;
    w.journal_dir = std::filesystem::absolute(config->database.data_dir, ec) / "workers";
    const Config c = *config;
    auto started = detail::Worker::start(std::move(w), [c]() -> Result<detail::FlowSource> {
      auto source = load_catalog(c, detail::UnresolvedHandlers::accept);
      if (!source) return tl::unexpected(std::move(source.error()));
      if (c.plugins.watch) (void)source->loader->watch();
      return detail::FlowSource{std::move(source->registry), std::move(source->loader)};
    });
    if (!started) {
      fmt::print(stderr, "flowreg: worker: {}\n", started.error().format());
      return kExitFailure;
    }
    worker = std::move(*started);
    fmt::print(stderr, "flowreg serve: worker {} running in this process\n", worker->id());
  }

  int sig = 0;
  while (sigwait(&signals, &sig) != 0) {
  }
  fmt::print(stderr, "flowreg serve: {} received, stopping\n",
             sig == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->stop();
  if (worker) {
    worker->begin_drain();
    const auto deadline = std::chrono::steady_clock::now() + config->worker.shutdown_grace;
    while (worker->held() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    worker->stop(std::chrono::steady_clock::now());
  }
  spdlog::shutdown();
  std::fflush(stdout);
  std::fflush(stderr);
  // Handlers still running (they cannot be interrupted) must not run on into static destructors.
  std::_Exit(kExitOk);
}

}  // namespace

void add_serve_command(CLI::App& app, const Globals& g, int& exit_code) {
  auto args = std::make_shared<ServeArgs>();
  auto* serve_cmd = app.add_subcommand(
      "serve", "Serve the HTTP API and the web dashboard (and, with --worker, run flows)");
  serve_cmd->add_option("--listen", args->listen,
                        "HOST:PORT to listen on (default: server.listen, 127.0.0.1:8080); anything "
                        "but loopback needs a token (server.token or FLOWREG_TOKEN)");
  serve_cmd->add_flag("--worker", args->worker,
                      "Also run a worker in this process (the worker: configuration)");
  serve_cmd->callback([&g, &exit_code, args] { exit_code = serve(g, *args); });
}

}  // namespace flowreg::cli
