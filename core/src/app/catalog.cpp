#include "app/catalog.hpp"

#include <filesystem>
#include <system_error>
#include <utility>

#include "cluster/embedded_cluster.hpp"
#include "store/migrations.hpp"

namespace flowreg::app {

namespace fs = std::filesystem;

namespace {

fs::path self_executable() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec);
}

// Plugins are inspected by this very binary (`flowreg __inspect FILE`, see core/src/main.cpp) and
// copied beside the embedded cluster's data.
PluginLoaderOptions loader_options(const Config& config) {
  PluginLoaderOptions options;
  options.settings = config.plugins;
  options.cache_dir = config.database.data_dir / "plugin-cache";
  options.inspector = self_executable();
  return options;
}

}  // namespace

Result<detail::FlowCatalog> load_plugins(const Config& config) {
  return detail::FlowCatalog::load_plugins(loader_options(config));
}

Result<detail::FlowCatalog> load_catalog(const Config& config, detail::UnresolvedHandlers policy,
                                         const PluginProblem& on_problem) {
  auto catalog = load_plugins(config);
  if (!catalog) return catalog;
  if (on_problem)
    for (const auto& p : catalog->plugins)
      if (p.error) on_problem(p);
  if (auto added = catalog->add_flows(config, policy); !added)
    return tl::unexpected(std::move(added.error()));
  return catalog;
}

detail::FlowSourceFactory SharedCatalog::share() const {
  return [registry = registry, loader = loader]() -> Result<detail::FlowSource> {
    return detail::FlowSource{registry, loader};
  };
}

Result<std::string> database_url(const Config& config) {
  if (!config.database.url.empty()) return config.database.url;
  auto cluster = detail::EmbeddedCluster::open(config.database);
  if (!cluster) return tl::unexpected(std::move(cluster.error()));
  return cluster->ensure_running();
}

Result<Database> open_database(const Config& config) {
  auto url = database_url(config);
  if (!url) return tl::unexpected(std::move(url.error()));
  if (auto migrated = detail::migrate(*url); !migrated) return tl::unexpected(migrated.error());
  auto store = detail::RunStore::connect(*url);
  if (!store) return tl::unexpected(std::move(store.error()));
  return Database{std::move(*url), std::move(*store)};
}

detail::WorkerOptions worker_options(const Config& config, std::string conninfo) {
  detail::WorkerOptions options;
  options.conninfo = std::move(conninfo);
  options.concurrency = config.worker.concurrency;
  options.batch_size = config.worker.batch_size;
  options.flows = config.worker.flows;
  options.lease = config.worker.lease;
  options.poll_interval = config.worker.poll_interval;
  options.max_output_bytes = static_cast<std::size_t>(config.worker.max_output_bytes);
  options.isolation = config.worker.isolation;
  options.limits = config.worker.limits;
  options.retention = config.worker.retention;  // started unless retention.enabled is false
  // Crashes are journaled beside the embedded cluster's data (one file per worker process), and
  // the journals of workers that died there are reported when one starts.
  std::error_code ec;
  options.journal_dir = fs::absolute(config.database.data_dir, ec) / "workers";
  if (config.database.url.empty()) {
    // This worker uses the embedded cluster: when it cannot reach it, it starts it again.
    auto cluster = detail::EmbeddedCluster::open(config.database);
    if (cluster)
      options.revive_database = [cluster = std::move(*cluster)]() mutable -> Result<void> {
        auto running = cluster.ensure_running();
        if (!running) return tl::unexpected(std::move(running.error()));
        return {};
      };
  }
  return options;
}

}  // namespace flowreg::app
