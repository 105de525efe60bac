#include "catalog/flow_catalog.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <string>
#include <utility>

#include "util/strings.hpp"

namespace flowreg::detail {

Result<FlowCatalog> FlowCatalog::load_plugins(PluginLoaderOptions options) {
  FlowCatalog catalog;
  catalog.registry = std::make_unique<FlowRegistry>();
  const std::filesystem::path dir = options.settings.dir;
  catalog.loader = std::make_unique<PluginLoader>(*catalog.registry, std::move(options));
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec)) {
    auto scanned = catalog.loader->scan();
    if (!scanned) return tl::unexpected(std::move(scanned.error()));
    catalog.plugins = std::move(*scanned);
  }
  return catalog;
}

Result<void> FlowCatalog::add_flows(const Config& config, UnresolvedHandlers policy) {
  if (config.flows.empty()) return {};
  if (policy == UnresolvedHandlers::refuse) {
    if (auto unresolved = unresolved_handlers(config, *loader, plugins); !unresolved.empty()) {
      std::string message =
          fmt::format("{}: {} handler(s) not found in the plugins of {}", config.file.string(),
                      unresolved.size(), config.plugins.dir.string());
      return make_error(Errc::invalid_definition, std::move(message), std::move(unresolved));
    }
  }
  return registry->register_module(
      Module{config.module, config.file.string(), config.flows, nullptr});
}

std::vector<Diagnostic> unresolved_handlers(const Config& config, const PluginLoader& loader,
                                            const std::vector<PluginInfo>& plugins) {
  std::vector<std::string> known;
  for (const auto& p : plugins)
    if (p.status == PluginStatus::loaded)
      known.insert(known.end(), p.handlers.begin(), p.handlers.end());
  std::vector<Diagnostic> out;
  for (const auto& flow : config.flows)
    for (const auto& step : flow.steps)
      if (!step.handler.empty() && !loader.handler(step.handler)) {
        const std::string hint = closest_match(step.handler, known);
        out.push_back(Diagnostic{
            Location{config.file.string()},
            fmt::format("flow '{}': step '{}': handler '{}' is not exported by any loaded plugin{}",
                        flow.slug, step.slug, step.handler,
                        hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint))});
      }
  return out;
}

}  // namespace flowreg::detail
