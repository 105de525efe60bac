#pragma once
// The flow catalogue of a process and the database it works on, set up the same way by every
// command: the plugins of the configured directory (inspected by this very binary, copied beside
// the embedded cluster's data), then the configuration's YAML flows; the run store on
// database.url or on the embedded cluster, started on demand and migrated.
//
// A process loads its catalogue once. `flowreg serve --worker` hands the one it serves the API
// from to its worker (share()), so the two never disagree and the plugins directory is loaded and
// watched once.
//
// Thread-safety: free functions; what they return has the thread-safety of its parts (the registry
// and the loader are thread-safe, a RunStore is used by one thread at a time).

#include <functional>
#include <memory>
#include <string>

#include "catalog/flow_catalog.hpp"
#include "flowreg/config.hpp"
#include "flowreg/error.hpp"
#include "flowreg/plugins.hpp"
#include "store/run_store.hpp"
#include "worker/worker.hpp"
#include "worker/worker_options.hpp"

namespace flowreg::app {

// Called for each file of the plugins directory that did not load.
using PluginProblem = std::function<void(const PluginInfo&)>;

// The plugins of the configured directory in a catalogue, without the configuration's YAML flows
// (what the plugins commands look at).
Result<detail::FlowCatalog> load_plugins(const Config& config);
// The plugins of the configured directory (on_problem for each file that did not load), then the
// configuration's YAML flows under `policy`.
Result<detail::FlowCatalog> load_catalog(const Config& config, detail::UnresolvedHandlers policy,
                                         const PluginProblem& on_problem);

// A catalogue shared by the parts of one process (the API and an in-process worker): the registry
// and the loader that fills it, owned together. The loader is declared after the registry it loads
// into, so it goes first.
struct SharedCatalog {
  std::shared_ptr<FlowRegistry> registry;
  std::shared_ptr<PluginLoader> loader;

  explicit SharedCatalog(detail::FlowCatalog&& catalog)
      : registry(std::move(catalog.registry)), loader(std::move(catalog.loader)) {}
  // The worker's flow source: this very registry and loader, not a second load.
  detail::FlowSourceFactory share() const;
};

// The run store on the configured database, migrated (migrations apply on first use).
struct Database {
  std::string url;
  detail::RunStore store;
};
// The connection string in effect: database.url, else the embedded cluster (started on demand).
Result<std::string> database_url(const Config& config);
Result<Database> open_database(const Config& config);

// A worker's options from the configuration's worker: section, on the database `conninfo`: its
// concurrency, batch, flows, lease, poll interval and output limit; its crash journals beside the
// embedded cluster's data; and, on the embedded cluster, the means to start that cluster again
// when the worker cannot reach it (the cluster's lock makes one process start it).
detail::WorkerOptions worker_options(const Config& config, std::string conninfo);

}  // namespace flowreg::app
