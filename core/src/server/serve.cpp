// `flowreg serve`: the HTTP API and the web dashboard (server.hpp), optionally with a worker in
// the same process.

#include "server/serve.hpp"

#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "app/schedules.hpp"
#include "metrics/store_metrics.hpp"
#include "server/server.hpp"
#include "worker/worker.hpp"

namespace flowreg::detail {

Result<void> serve(ServeOptions options) {
  const Config& config = options.config;
  // Checked before anything starts: a bad address or a missing token is a usage problem.
  if (auto plan = plan_listen(config.server); !plan) return tl::unexpected(plan.error());

  // One catalogue for the process: the API serves from it, and the worker (--worker) borrows it.
  auto loaded = app::load_catalog(config, UnresolvedHandlers::accept, options.on_plugin_problem);
  if (!loaded) return tl::unexpected(std::move(loaded.error()));
  const app::SharedCatalog catalog(std::move(*loaded));
  if (config.plugins.watch)
    if (auto watching = catalog.loader->watch(); !watching)
      spdlog::warn("not watching {} for new plugins: {}", config.plugins.dir.string(),
                   watching.error().format());
  auto db = app::open_database(config);
  if (!db) return tl::unexpected(std::move(db.error()));
  // The file's schedules, stored (and those it no longer declares removed) as a worker does.
  if (auto synced = app::sync_schedules(db->store, config); !synced)
    return tl::unexpected(std::move(synced.error()));

  // Signals are taken synchronously by this thread; threads started from here inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // /metrics: this process's metrics (its worker's with --worker), and runs and tasks read from
  // the store at scrape time.
  const metrics::StoreMetrics store_metrics(db->url);

  ServerOptions server_options;
  server_options.settings = config.server;
  server_options.conninfo = db->url;
  server_options.registry = catalog.registry.get();
  PluginLoader* loader = catalog.loader.get();
  server_options.plugins = [loader] { return loader->plugins(); };
  auto server = HttpServer::start(std::move(server_options));
  if (!server) return tl::unexpected(std::move(server.error()));
  const std::string& host = (*server)->host();
  fmt::print(stderr, "flowreg serve: listening on {}://{}:{}/\n",
             config.server.tls_cert.empty() ? "http" : "https",
             host.find(':') != std::string::npos ? "[" + host + "]" : host, (*server)->port());
  std::fflush(stderr);

  std::unique_ptr<Worker> worker;
  if (options.worker) {
    auto started = Worker::start(app::worker_options(config, db->url), catalog.share());
    if (!started) return make_error(started.error().code, "worker: " + started.error().format());
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
    const auto deadline = std::chrono::steady_clock::now() + config.worker.shutdown_grace;
    while (worker->held() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    worker->stop(std::chrono::steady_clock::now());
  }
  spdlog::shutdown();
  std::fflush(stdout);
  std::fflush(stderr);
  // Handlers still running (they cannot be interrupted) must not run on into static destructors.
  std::_Exit(0);
}

}  // namespace flowreg::detail
