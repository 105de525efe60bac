#include "cli/common.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <utility>

#include "config/json_schema.hpp"
#include "config/yaml_json.hpp"
#include "logging/json_log.hpp"
#include "store/embedded_cluster.hpp"
#include "store/migrations.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::cli {

namespace fs = std::filesystem;

std::string valid_text(std::string_view raw) { return detail::utf8_valid(raw); }

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

std::string plugin_error_text(const PluginError& error) {
  return fmt::format("[{}] {}", to_string(error.stage), error.message);
}

json plugin_error_json(const PluginError& error) {
  return {{"stage", to_string(error.stage)}, {"message", valid_text(error.message)}};
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

namespace {

fs::path self_executable() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec);
}

// Plugins are inspected by this very binary (`flowreg __inspect FILE`, see main.cpp) and copied
// beside the embedded cluster's data.
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

Result<detail::FlowCatalog> load_catalog(const Config& config, detail::UnresolvedHandlers policy) {
  auto catalog = load_plugins(config);
  if (!catalog) return catalog;
  for (const auto& p : catalog->plugins)
    if (p.error)
      print_note("warning", fmt::format("flowreg: warning: plugin {}: {}", p.file.string(),
                                        plugin_error_text(*p.error)));
  if (auto added = catalog->add_flows(config, policy); !added)
    return tl::unexpected(std::move(added.error()));
  return catalog;
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

int with_store(const Globals& g, const std::function<int(detail::RunStore&)>& command) {
  auto config = effective_config(g);
  auto db = config ? open_database(*config) : tl::unexpected(config.error());
  if (!db) return report(db.error());
  return command(db->store);
}

std::string iso_time(const detail::TimePoint& t) {
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::seconds>(t));
}

json to_ordered(const nlohmann::json& j) { return detail::ordered_copy(j); }

json run_json(const detail::RunInfo& r) {
  return {{"id", r.id},
          {"flow", r.flow_slug},
          {"version", r.flow_version},
          {"status", detail::to_string(r.status)},
          {"input", to_ordered(r.input)},
          {"output", r.output ? to_ordered(*r.output) : json(nullptr)},
          {"error", r.error ? json(*r.error) : json(nullptr)},
          {"created_at", iso_time(r.created_at)},
          {"finished_at", r.finished_at ? json(iso_time(*r.finished_at)) : json(nullptr)},
          {"retry_of", r.retry_of ? json(*r.retry_of) : json(nullptr)}};
}

json options_json(const Options& o) {
  return {{"max_attempts", o.max_attempts},
          {"base_delay", format_duration(o.base_delay)},
          {"max_delay", format_duration(o.max_delay)},
          {"timeout", format_duration(o.timeout)}};
}

// The documented JSON form of a flow (README, "JSON output").
json flow_json(const RegisteredFlow& registered) {
  const FlowDef& flow = registered.def;
  json steps = json::array();
  for (const auto& s : flow.steps)
    steps.push_back({{"slug", s.slug},
                     {"kind", to_string(s.kind)},
                     {"depends_on", s.depends_on},
                     {"handler", s.handler},
                     {"options", options_json(flow.step_options(s))}});
  return {{"slug", flow.slug},
          {"module", flow.module},
          {"version", flow_version(flow)},
          {"description", flow.description},
          {"source", flow.source.empty() ? json(nullptr) : json(valid_text(flow.source))},
          {"options", options_json(flow.options)},
          {"input_schema", flow.input_schema ? to_ordered(*flow.input_schema) : json(nullptr)},
          {"steps", std::move(steps)}};
}

json step_json(const detail::StepInfo& s) {
  return {{"slug", s.slug},
          {"kind", s.kind},
          {"status", s.status},
          {"tasks", s.task_count},
          {"attempts", s.attempts},
          {"worker", s.worker ? json(*s.worker) : json(nullptr)},
          {"started_at", s.started_at ? json(iso_time(*s.started_at)) : json(nullptr)},
          {"finished_at", s.finished_at ? json(iso_time(*s.finished_at)) : json(nullptr)},
          {"error", s.error ? json(*s.error) : json(nullptr)},
          {"output", s.output ? to_ordered(*s.output) : json(nullptr)}};
}

json plugin_json(const PluginInfo& p) {
  return {{"file", valid_text(p.file.string())},
          {"module", p.module.empty() ? json(nullptr) : json(p.module)},
          {"sha256", p.sha256.empty() ? json(nullptr) : json(p.sha256)},
          {"abi", p.abi.empty() ? json(nullptr) : json(p.abi)},
          {"fingerprint", p.fingerprint.empty() ? json(nullptr) : json(p.fingerprint)},
          {"status", to_string(p.status)},
          {"error", p.error ? plugin_error_json(*p.error) : json(nullptr)},
          {"flows", p.flows},
          {"handlers", p.handlers}};
}

std::string worker_status(const detail::WorkerRecord& w) {
  // Liveness from the heartbeat's age (by the server's clock): a worker that missed
  // kStaleAfter heartbeats in a row is stale (killed, frozen, or cut off from the database).
  static constexpr int kStaleAfter = 3;
  if (w.stopped_at) return "stopped";
  const Millis every = w.heartbeat_interval.value_or(Millis(5'000));
  if (w.heartbeat_age > every * kStaleAfter) return "stale";
  return w.state == "stuck" ? "stuck" : "running";
}

json worker_json(const detail::WorkerRecord& w) {
  json flows = json::array();
  for (const auto& f : w.flows) flows.push_back({{"slug", f.slug}, {"version", f.version}});
  return {{"id", w.id},
          {"host", w.host},
          {"pid", w.pid},
          {"concurrency", w.concurrency},
          {"flows", flows},
          {"status", worker_status(w)},
          {"stopped", w.stopped_at.has_value()},
          {"last_heartbeat_ms_ago", w.heartbeat_age.count()},
          {"heartbeat_interval_ms",
           w.heartbeat_interval ? json(w.heartbeat_interval->count()) : json(nullptr)}};
}

Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what) {
  if (!flow.input_schema) return check_input(text, flow, what, nullptr);
  auto schema = detail::JsonSchema::compile(*flow.input_schema);
  if (!schema) return tl::unexpected(std::move(schema.error()));
  return check_input(text, flow, what, &*schema);
}

Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what, const detail::JsonSchema* schema) {
  // Checked on the text, before anything recurses into it.
  const int max_depth = detail::YamlLimits{}.max_depth;
  if (auto at = detail::nesting_beyond(text, static_cast<std::size_t>(max_depth)))
    return make_error(Errc::parse,
                      fmt::format("{} nests deeper than {} levels (line {}, column {})", what,
                                  max_depth, at->line, at->column));
  nlohmann::json input;
  try {
    input = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return make_error(Errc::parse,
                      fmt::format("{} is not valid JSON: {}", what, valid_text(e.what())));
  }
  if (schema) {
    std::vector<Diagnostic> problems;
    for (const auto& p : schema->validate(input))
      problems.push_back(
          Diagnostic{{}, fmt::format("input of flow '{}': {}", flow.slug, p.message)});
    if (!problems.empty()) {
      std::string message = problems.front().message;
      return make_error(Errc::invalid_argument, std::move(message), std::move(problems));
    }
  }
  return input;
}

void print_run_text(const detail::RunInfo& r) {
  fmt::print("run {}  flow={} version={}  {}\n", r.id, r.flow_slug, r.flow_version,
             detail::to_string(r.status));
  if (r.output) fmt::print("output: {}\n", detail::json_text(*r.output));
  if (r.error) fmt::print("error: {}\n", *r.error);
}

}  // namespace flowreg::cli
