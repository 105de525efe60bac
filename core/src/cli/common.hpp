#pragma once
// What the command groups share: the global options, the exit codes, printing errors, the
// configuration in effect, and the text form of a run; the rest is the application layer's (app/).

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "app/catalog.hpp"
#include "app/forms.hpp"
#include "app/runs.hpp"
#include "catalog/flow_catalog.hpp"
#include "flowreg/config.hpp"
#include "flowreg/error.hpp"
#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"
#include "store/run_store.hpp"

namespace flowreg::cli {

// Exit codes: 0 success, 1 failure (invalid input, not found, a run that failed), 2 usage error
// (unknown command or option, missing argument).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Durations of the command line that are not flow options (how old a run to prune, how long to
// wait) have no 7-day limit: 100 years, far inside what PostgreSQL's interval holds.
inline constexpr Millis kMaxCommandDuration{876'600LL * 3'600'000};

// The options before the command (--config, --plugins, ...), parsed before any command runs.
struct Globals {
  std::string config_file;
  std::string plugins_dir;
  std::string log_level = "warn";
  std::string log_format = "text";  // or "json": one JSON object per line (logging/json_log.hpp)
  bool allow_unsafe_plugins = false;
};

// The forms, the catalogue, the database and starting a run come from the application layer
// (app/), which the HTTP server shares; these are their names in the commands.
using app::check_input;
using app::Database;
using app::database_url;
using app::flow_json;
using app::handler_processes_text;
using app::iso_time;
using app::json;
using app::load_plugins;
using app::open_database;
using app::options_json;
using app::plugin_error_json;
using app::plugin_error_text;
using app::plugin_json;
using app::run_json;
using app::step_json;
using app::to_ordered;
using app::valid_text;
using app::worker_json;
using app::worker_status;

// A line for people on stderr: `text` as it is, or with --log-format json a JSON line at `level`
// ("info", "warning", "error").
void print_note(std::string_view level, std::string_view text);
// Prints the error on stderr: each of its details on a line, else "flowreg: MESSAGE" (print_note
// at level "error").
void print_error(const Error& error);
// print_error, then kExitFailure.
int report(const Error& error);

// The configuration in effect: --config, else ./flowreg.yaml when present, else the defaults;
// --plugins and --allow-unsafe-plugins applied.
Result<Config> effective_config(const Globals& g);

// A warning on stderr for a file of the plugins directory that did not load (p.error set).
void warn_plugin(const PluginInfo& p);
// The plugins of the configured directory (warn_plugin for each file that did not load),
// then the configuration's YAML flows under `policy`.
Result<detail::FlowCatalog> load_catalog(const Config& config, detail::UnresolvedHandlers policy);

// Runs a command against the store of the effective configuration; prints the error and returns
// kExitFailure when there is none.
int with_store(const Globals& g, const std::function<int(detail::RunStore&)>& command);

// A run's text form: its id, flow, version and status, then its output or error.
void print_run_text(const detail::RunInfo& r);

}  // namespace flowreg::cli
