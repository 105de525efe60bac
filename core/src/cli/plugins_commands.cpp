// `flowreg plugins`: the files of the plugins directory, and whether other files would load.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace {

int plugins_list(const Globals& g, bool as_json) {
  auto config = effective_config(g);
  auto catalog = config ? load_plugins(*config) : tl::unexpected(config.error());
  if (!catalog) return report(catalog.error());
  const std::vector<PluginInfo>& scanned = catalog->plugins;
  if (as_json) {
    json out = json::array();
    for (const auto& p : scanned) out.push_back(plugin_json(p));
    fmt::print("{}\n", detail::json_text(out, 2));
    return kExitOk;
  }
  if (scanned.empty()) fmt::print(stderr, "no plugins in {}\n", config->plugins.dir.string());
  for (const auto& p : scanned) {
    fmt::print("{}  {}  module={} abi={} sha256={}\n", p.file.filename().string(),
               to_string(p.status), p.module.empty() ? "-" : p.module, p.abi.empty() ? "-" : p.abi,
               p.sha256.empty() ? "-" : p.sha256.substr(0, 16));
    if (p.error) fmt::print("  {}\n", plugin_error_text(*p.error));
    if (!p.flows.empty()) fmt::print("  flows: {}\n", fmt::join(p.flows, ", "));
  }
  return kExitOk;
}

// Would each file load next to the plugins already in the directory?
int plugins_check(const Globals& g, const std::vector<std::string>& files, bool as_json) {
  auto config = effective_config(g);
  auto catalog = config ? load_plugins(*config) : tl::unexpected(config.error());
  if (!catalog) return report(catalog.error());
  PluginLoader& loader = *catalog->loader;
  int status = kExitOk;
  json out = json::array();
  for (const auto& file : files) {
    const PluginInfo info = loader.check(std::filesystem::absolute(file));
    if (info.status != PluginStatus::loaded) status = kExitFailure;
    if (as_json) {
      out.push_back(plugin_json(info));
    } else if (info.error) {
      fmt::print(stderr, "{}: {}\n", file, plugin_error_text(*info.error));
    } else {
      fmt::print("{}: ok (module {}, abi {}, flows: {})\n", file, info.module, info.abi,
                 fmt::join(info.flows, ", "));
    }
  }
  if (as_json) fmt::print("{}\n", detail::json_text(out, 2));
  return status;
}

struct PluginsArgs {
  bool list_json = false;
  std::vector<std::string> check_files;
  bool check_json = false;
};

}  // namespace

void add_plugins_commands(CLI::App& app, const Globals& g, int& exit_code) {
  auto args = std::make_shared<PluginsArgs>();
  auto* plugins = app.add_subcommand("plugins", "Inspect and check plugin files");
  plugins->require_subcommand(1);
  auto* list =
      plugins->add_subcommand("list", "Every file of the plugins directory and its status");
  list->add_flag("--json", args->list_json, "Print a JSON array (fields: see docs/plugins.md)");
  list->callback([&g, &exit_code, args] { exit_code = plugins_list(g, args->list_json); });
  auto* check = plugins->add_subcommand("check", "Would these files load? Exit 0 if all would");
  check->add_option("files", args->check_files, "Plugin files")->required();
  check->add_flag("--json", args->check_json, "Print a JSON array");
  check->callback([&g, &exit_code, args] {
    exit_code = plugins_check(g, args->check_files, args->check_json);
  });
}

}  // namespace flowreg::cli
