#pragma once
// The flow catalogue: the flows a process works with, put together in one place. The plugins of
// the configured directory are loaded into a registry of the catalogue's own, then the
// configuration's YAML flows are registered beside them as one module (Config::module, from
// Config::file), their handlers looked up among the plugins' exports.
//
// A YAML step may name a handler that no loaded plugin exports (a typo, a plugin not dropped in
// yet). The caller states what that means with UnresolvedHandlers: commands that show or start
// flows refuse the whole file and name each such step; a worker registers the flows anyway and
// serves those whose every handler resolves, saying which it does not serve (a plugin dropped in
// later resolves them).
//
// Thread-safety: a FlowCatalog has one owner; the registry and loader it holds are thread-safe
// themselves.

#include <memory>
#include <vector>

#include "flowreg/config.hpp"
#include "flowreg/error.hpp"
#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"

namespace flowreg::detail {

// What FlowCatalog::add_flows does with a YAML step whose handler no loaded plugin exports.
enum class UnresolvedHandlers {
  refuse,  // registers nothing: Errc::invalid_definition with one Diagnostic per such step
  accept,  // registers the flows all the same; running them is the caller's decision
};

// A registry, the plugin loader that fills it, and what the loader's scan found. Move-only.
struct FlowCatalog {
  std::unique_ptr<FlowRegistry> registry;
  std::unique_ptr<PluginLoader> loader;  // loads into *registry: declared after it, destroyed first
  std::vector<PluginInfo> plugins;       // every file of the directory and its status

  // A new registry with the plugins of options.settings.dir loaded into it; none when that
  // directory does not exist. Errc::io when it exists but cannot be read (PluginLoader::scan).
  static Result<FlowCatalog> load_plugins(PluginLoaderOptions options);

  // Registers config.flows as the module config.module from config.file (nothing when the
  // configuration has no flows), under `policy` for handlers that do not resolve. Other errors
  // are the registry's (a module name or flow slug a plugin holds already).
  Result<void> add_flows(const Config& config, UnresolvedHandlers policy);
};

// The steps of config.flows whose handler `loader` does not resolve, located at config.file, each
// with the closest handler name a loaded plugin exports as a hint.
std::vector<Diagnostic> unresolved_handlers(const Config& config, const PluginLoader& loader,
                                            const std::vector<PluginInfo>& plugins);

}  // namespace flowreg::detail
