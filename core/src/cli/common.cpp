#include "cli/common.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <utility>

#include "logging/json_log.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace fs = std::filesystem;

void print_note(std::string_view level, std::string_view text) {
  if (detail::logging::json_enabled())
    fmt::print(stderr, "{}", detail::logging::json_line(level, text));
  else
    fmt::print(stderr, "{}\n", text);
}

void print_error(const Error& error) {
  if (error.details.empty()) {
    print_note("error", fmt::format("flowreg: {}", error.message));
    return;
  }
  for (const auto& d : error.details) print_note("error", d.format());
}

int report(const Error& error) {
  print_error(error);
  return kExitFailure;
}

Result<Config> effective_config(const Globals& g) {
  Result<Config> config = Config{};
  if (!g.config_file.empty()) {
    config = load_config(g.config_file);
  } else if (std::error_code ec; fs::is_regular_file("flowreg.yaml", ec)) {
    config = load_config("flowreg.yaml");
  }
  if (config && !g.plugins_dir.empty()) config->plugins.dir = g.plugins_dir;
  if (config && g.allow_unsafe_plugins) config->plugins.allow_unsafe = true;
  return config;
}

void warn_plugin(const PluginInfo& p) {
  print_note("warning", fmt::format("flowreg: warning: plugin {}: {}", p.file.string(),
                                    plugin_error_text(*p.error)));
}

Result<detail::FlowCatalog> load_catalog(const Config& config, detail::UnresolvedHandlers policy) {
  return app::load_catalog(config, policy, warn_plugin);
}

int with_store(const Globals& g, const std::function<int(detail::RunStore&)>& command) {
  auto config = effective_config(g);
  auto db = config ? open_database(*config) : tl::unexpected(config.error());
  if (!db) return report(db.error());
  return command(db->store);
}

void print_run_text(const detail::RunInfo& r) {
  fmt::print("run {}  flow={} version={}  {}\n", r.id, r.flow_slug, r.flow_version,
             app::run_status(r.status, r.scheduled));
  if (r.start_at) fmt::print("start at: {}\n", iso_time(*r.start_at));
  if (r.priority) fmt::print("priority: {} (the run's own)\n", *r.priority);
  if (r.held_key) fmt::print("concurrency: {}\n", app::held_text(r));
  if (r.status == detail::RunStatus::started && r.waiting)
    fmt::print("waiting: {}\n", app::waiting_text(r));
  if (r.parent)
    fmt::print("parent: run {}  step {}[{}]\n", r.parent->run, r.parent->step, r.parent->index);
  for (const auto& c : r.children)
    fmt::print("child: run {}  flow={}  {}  step {}[{}]\n", c.id, c.flow, to_string(c.status),
               c.step, c.index);
  if (r.children_total > std::ssize(r.children))
    fmt::print("  (the first {} of {} child runs)\n", r.children.size(), r.children_total);
  if (r.output) fmt::print("output: {}\n", detail::json_text(*r.output));
  if (r.error) fmt::print("error: {}\n", *r.error);
}

}  // namespace flowreg::cli
