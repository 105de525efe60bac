#pragma once
// What the command groups share: the global options, the exit codes, printing errors, the
// configuration in effect, the flow catalogue, the database, and the JSON and text forms of a run.

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "catalog/flow_catalog.hpp"
#include "config/json_schema.hpp"
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

using json = nlohmann::ordered_json;

// A file name, a path or other text from outside, for JSON.
std::string valid_text(std::string_view raw);

// A line for people on stderr: `text` as it is, or with --log-format json a JSON line at `level`
// ("info", "warning", "error").
void print_note(std::string_view level, std::string_view text);
// Prints the error on stderr: each of its details on a line, else "flowreg: MESSAGE" (print_note
// at level "error").
void print_error(const Error& error);
// print_error, then kExitFailure.
int report(const Error& error);

// How the commands print a plugin file's error: "[stage] message", and its JSON form.
std::string plugin_error_text(const PluginError& error);
json plugin_error_json(const PluginError& error);

// The configuration in effect: --config, else ./flowreg.yaml when present, else the defaults;
// --plugins and --allow-unsafe-plugins applied.
Result<Config> effective_config(const Globals& g);

// The plugins of the configured directory in a catalogue, without the configuration's YAML flows
// (what the plugins commands look at).
Result<detail::FlowCatalog> load_plugins(const Config& config);
// The plugins of the configured directory (a warning on stderr for each file that did not load),
// then the configuration's YAML flows under `policy`.
Result<detail::FlowCatalog> load_catalog(const Config& config, detail::UnresolvedHandlers policy);

// The run store on the configured database, migrated (migrations apply on first use).
struct Database {
  std::string url;
  detail::RunStore store;
};
// The connection string in effect: database.url, else the embedded cluster (started on demand).
Result<std::string> database_url(const Config& config);
Result<Database> open_database(const Config& config);
// Runs a command against the store of the effective configuration; prints the error and returns
// kExitFailure when there is none.
int with_store(const Globals& g, const std::function<int(detail::RunStore&)>& command);

// The documented JSON form of a run (README, "runs"), and its text form.
std::string iso_time(const detail::TimePoint& t);
json to_ordered(const nlohmann::json& j);
json run_json(const detail::RunInfo& r);
void print_run_text(const detail::RunInfo& r);
// A step of `runs show --json`: {slug, kind, status, tasks, attempts, started_at, finished_at,
// error, output}.
json step_json(const detail::StepInfo& s);

// The documented JSON form of a flow (README, "JSON output") and of its options.
json options_json(const Options& o);
json flow_json(const RegisteredFlow& registered);
// A file of the plugins directory as `plugins list --json` prints it.
json plugin_json(const PluginInfo& p);
// A worker as `workers --json` prints it, and its status: running, stuck, stale or stopped.
std::string worker_status(const detail::WorkerRecord& w);
json worker_json(const detail::WorkerRecord& w);

// A run's input, given as JSON text, checked before anything is written: the nesting limit of
// YAML files, then JSON syntax (Errc::parse, the message starting with `what`, "--input" for the
// command line), then the flow's input schema (Errc::invalid_argument, one detail per problem:
// "input of flow 'x': ...").
Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what);
// The same with the flow's input schema compiled once for many inputs (nullptr: none).
Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what, const detail::JsonSchema* schema);

}  // namespace flowreg::cli
