#include "cli/commands.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <thread>

#include "cli/worker_command.hpp"
#include "config/json_schema.hpp"
#include "config/yaml_json.hpp"
#include "flowreg/config.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"
#include "store/embedded_cluster.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using detail::json_text;

struct Globals {
  std::string config_file;
  std::string plugins_dir;
  std::string log_level = "warn";
  bool allow_unsafe_plugins = false;
};

// Durations of the command line that are not flow options (how old a run to prune, how long to
// wait) have no 7-day limit: 100 years, far inside what PostgreSQL's interval holds.
constexpr Millis kMaxCommandDuration{876'600LL * 3'600'000};

// A file name, a path or other text from outside, for JSON.
std::string valid_text(std::string_view raw) { return detail::utf8_valid(raw); }

void print_error(const Error& error) {
  if (error.details.empty()) {
    fmt::print(stderr, "flowreg: {}\n", error.message);
    return;
  }
  for (const auto& d : error.details) fmt::print(stderr, "{}\n", d.format());
}

// The configuration in effect: --config, else ./flowreg.yaml when present, else the defaults.
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

fs::path self_executable() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec);
}

PluginLoaderOptions loader_options(const Config& config) {
  PluginLoaderOptions options;
  options.settings = config.plugins;
  options.cache_dir = config.database.data_dir / "plugin-cache";
  options.inspector = self_executable();
  return options;
}

// A registry with the plugins of the configured directory and the configuration's YAML flows.
struct Catalog {
  Config config;  // its flows are in the registry, not here
  std::unique_ptr<FlowRegistry> registry = std::make_unique<FlowRegistry>();
  std::unique_ptr<PluginLoader> loader;
  std::vector<PluginInfo> plugins;
};

// Every handler a YAML flow names must be exported by a loaded plugin.
std::vector<Diagnostic> unresolved_handlers(const Config& config, const PluginLoader& loader,
                                            const std::vector<PluginInfo>& plugins) {
  std::vector<std::string> known;
  for (const auto& p : plugins)
    if (p.status == PluginStatus::loaded)
      known.insert(known.end(), p.handlers.begin(), p.handlers.end());
  std::vector<Diagnostic> out;
  for (const auto& flow : config.flows)
    for (const auto& step : flow.steps)
      if (!loader.handler(step.handler)) {
        const std::string hint = detail::closest_match(step.handler, known);
        out.push_back(Diagnostic{
            Location{config.file.string()},
            fmt::format("flow '{}': step '{}': handler '{}' is not exported by any loaded plugin{}",
                        flow.slug, step.slug, step.handler,
                        hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint))});
      }
  return out;
}

// A registry with the plugins of the configured directory (when it exists) loaded into it.
Result<Catalog> load_plugins(const Config& config, bool warn) {
  Catalog catalog;
  catalog.loader = std::make_unique<PluginLoader>(*catalog.registry, loader_options(config));
  std::error_code ec;
  if (fs::is_directory(config.plugins.dir, ec)) {
    auto scanned = catalog.loader->scan();
    if (!scanned) return tl::unexpected(std::move(scanned.error()));
    catalog.plugins = std::move(*scanned);
    if (warn)
      for (const auto& p : catalog.plugins)
        if (p.error) fmt::print(stderr, "flowreg: warning: plugin {}\n", p.describe_error());
  }
  return catalog;
}

// The registry the flows commands see: the plugins, then the configuration's YAML flows as one
// module, their handlers resolved against the plugins.
Result<Catalog> load_catalog(const Globals& g) {
  auto config = effective_config(g);
  if (!config) return tl::unexpected(std::move(config.error()));
  auto catalog = load_plugins(*config, true);
  if (catalog) catalog->config = *config;
  if (!catalog || config->flows.empty()) return catalog;
  if (auto unresolved = unresolved_handlers(*config, *catalog->loader, catalog->plugins);
      !unresolved.empty()) {
    std::string message =
        fmt::format("{}: {} handler(s) not found in the plugins of {}", config->file.string(),
                    unresolved.size(), config->plugins.dir.string());
    return make_error(Errc::invalid_definition, std::move(message), std::move(unresolved));
  }
  auto registered = catalog->registry->register_module(
      Module{config->module, config->file.string(), std::move(config->flows), nullptr});
  if (!registered) return tl::unexpected(std::move(registered.error()));
  return catalog;
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
          {"input_schema",
           flow.input_schema ? json::parse(json_text(*flow.input_schema)) : json(nullptr)},
          {"steps", std::move(steps)}};
}

void print_flow_text(const RegisteredFlow& registered) {
  const FlowDef& flow = registered.def;
  fmt::print("{}  module={} version={}{}\n", flow.slug, flow.module, registered.version,
             flow.description.empty() ? "" : "  " + flow.description);
  std::size_t width = 0;
  for (const auto& s : flow.steps) width = std::max(width, s.slug.size());
  for (const StepDef* s : topological_order(flow)) {
    fmt::print("  {:<{}}  {:<6}  {}{}\n", s->slug, width, to_string(s->kind), s->handler,
               s->depends_on.empty() ? "" : fmt::format("  <- {}", fmt::join(s->depends_on, ", ")));
  }
}

std::string dot_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string dot_quote(std::string_view text) { return "\"" + dot_escape(text) + "\""; }

void print_flow_dot(const FlowDef& flow) {
  fmt::print("digraph {} {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n",
             dot_quote(flow.slug));
  for (const auto& s : flow.steps)
    fmt::print("  {} [label=\"{}\\n{}{}\"{}];\n", dot_quote(s.slug), dot_escape(s.slug),
               dot_escape(s.handler), s.kind == StepKind::map ? " (map)" : "",
               s.kind == StepKind::map ? ", shape=box3d" : "");
  for (const auto& s : flow.steps)
    for (const auto& d : s.depends_on) fmt::print("  {} -> {};\n", dot_quote(d), dot_quote(s.slug));
  fmt::print("}}\n");
}

int flows_list(const Globals& g, bool as_json) {
  auto catalog = load_catalog(g);
  if (!catalog) {
    print_error(catalog.error());
    return kExitFailure;
  }
  const auto flows = catalog->registry->list();
  if (as_json) {
    json out = json::array();
    for (const auto& f : flows) out.push_back(flow_json(*f));
    fmt::print("{}\n", json_text(out, 2));
    return kExitOk;
  }
  if (flows.empty()) fmt::print(stderr, "no flows registered\n");
  for (const auto& f : flows) print_flow_text(*f);
  return kExitOk;
}

int flows_show(const Globals& g, const std::string& slug, bool as_json, bool as_dot) {
  auto catalog = load_catalog(g);
  if (!catalog) {
    print_error(catalog.error());
    return kExitFailure;
  }
  const FlowRef flow = catalog->registry->get(slug);
  if (!flow) {
    fmt::print(stderr, "flowreg: no flow with slug '{}'\n", slug);
    return kExitFailure;
  }
  if (as_json)
    fmt::print("{}\n", json_text(flow_json(*flow), 2));
  else if (as_dot)
    print_flow_dot(flow->def);
  else
    print_flow_text(*flow);
  return kExitOk;
}

int flows_validate(const std::vector<std::string>& paths) {
  int status = kExitOk;
  for (const auto& path : paths) {
    auto config = load_config(path);
    if (!config) {
      print_error(config.error());
      status = kExitFailure;
      continue;
    }
    fmt::print("{}: ok ({} flow{})\n", path, config->flows.size(),
               config->flows.size() == 1 ? "" : "s");
  }
  return status;
}

json plugin_json(const PluginInfo& p) {
  json error = nullptr;
  if (p.error)
    error = {{"stage", to_string(p.error->stage)}, {"message", valid_text(p.error->message)}};
  return {{"file", valid_text(p.file.string())},
          {"module", p.module.empty() ? json(nullptr) : json(p.module)},
          {"sha256", p.sha256.empty() ? json(nullptr) : json(p.sha256)},
          {"abi", p.abi.empty() ? json(nullptr) : json(p.abi)},
          {"fingerprint", p.fingerprint.empty() ? json(nullptr) : json(p.fingerprint)},
          {"status", to_string(p.status)},
          {"error", std::move(error)},
          {"flows", p.flows},
          {"handlers", p.handlers}};
}

int plugins_list(const Globals& g, bool as_json) {
  auto config = effective_config(g);
  auto catalog = config ? load_plugins(*config, false) : tl::unexpected(config.error());
  if (!catalog) {
    print_error(catalog.error());
    return kExitFailure;
  }
  const std::vector<PluginInfo>& scanned = catalog->plugins;
  if (as_json) {
    json out = json::array();
    for (const auto& p : scanned) out.push_back(plugin_json(p));
    fmt::print("{}\n", json_text(out, 2));
    return kExitOk;
  }
  if (scanned.empty()) fmt::print(stderr, "no plugins in {}\n", config->plugins.dir.string());
  for (const auto& p : scanned) {
    fmt::print("{}  {}  module={} abi={} sha256={}\n", p.file.filename().string(),
               to_string(p.status), p.module.empty() ? "-" : p.module, p.abi.empty() ? "-" : p.abi,
               p.sha256.empty() ? "-" : p.sha256.substr(0, 16));
    if (p.error) fmt::print("  [{}] {}\n", to_string(p.error->stage), p.error->message);
    if (!p.flows.empty()) fmt::print("  flows: {}\n", fmt::join(p.flows, ", "));
  }
  return kExitOk;
}

// Would each file load next to the plugins already in the directory?
int plugins_check(const Globals& g, const std::vector<std::string>& files, bool as_json) {
  auto config = effective_config(g);
  auto catalog = config ? load_plugins(*config, false) : tl::unexpected(config.error());
  if (!catalog) {
    print_error(catalog.error());
    return kExitFailure;
  }
  PluginLoader& loader = *catalog->loader;
  int status = kExitOk;
  json out = json::array();
  for (const auto& file : files) {
    const PluginInfo info = loader.check(fs::absolute(file));
    if (info.status != PluginStatus::loaded) status = kExitFailure;
    if (as_json) {
      out.push_back(plugin_json(info));
    } else if (info.error) {
      fmt::print(stderr, "{}: [{}] {}\n", file, to_string(info.error->stage), info.error->message);
    } else {
      fmt::print("{}: ok (module {}, abi {}, flows: {})\n", file, info.module, info.abi,
                 fmt::join(info.flows, ", "));
    }
  }
  if (as_json) fmt::print("{}\n", json_text(out, 2));
  return status;
}

// The connection string in effect: database.url, else the embedded cluster (started on demand).
Result<std::string> database_url(const Config& config) {
  if (!config.database.url.empty()) return config.database.url;
  auto cluster = detail::EmbeddedCluster::open(config.database.data_dir);
  if (!cluster) return tl::unexpected(std::move(cluster.error()));
  return cluster->ensure_running();
}

int db_migrate(const Globals& g) {
  auto config = effective_config(g);
  auto url = config ? database_url(*config) : tl::unexpected(config.error());
  auto report = url ? detail::migrate(*url) : tl::unexpected(url.error());
  if (!report) {
    print_error(report.error());
    return kExitFailure;
  }
  for (const auto& m : report->applied) fmt::print("applied {:04}_{}\n", m.version, m.name);
  fmt::print("{} migration(s) applied, {} already applied\n", report->applied.size(),
             report->already_applied);
  return kExitOk;
}

int db_status(const Globals& g, bool as_json) {
  auto config = effective_config(g);
  if (!config) {
    print_error(config.error());
    return kExitFailure;
  }
  json out = {{"embedded", config->database.url.empty()}};
  std::string url = config->database.url;
  if (url.empty()) {
    auto cluster = detail::EmbeddedCluster::open(config->database.data_dir);
    auto status = cluster ? cluster->status() : tl::unexpected(cluster.error());
    if (!status) {
      print_error(status.error());
      return kExitFailure;
    }
    out["data_dir"] = valid_text(status->data_dir.string());
    out["cluster_dir"] = valid_text(status->cluster_dir.string());
    out["initialized"] = status->initialized;
    out["running"] = status->running;
    out["postmaster_pid"] = status->running ? json(status->postmaster_pid) : json(nullptr);
    if (status->running) url = status->connection_string;
  }
  json migrations = nullptr;
  if (!url.empty()) {
    auto listed = detail::migration_status(url);
    if (!listed) {
      print_error(listed.error());
      return kExitFailure;
    }
    migrations = json::array();
    for (const auto& m : *listed)
      migrations.push_back({{"version", m.version},
                            {"name", m.name},
                            {"state", to_string(m.state)},
                            {"applied_at", m.applied_at ? json(*m.applied_at) : json(nullptr)}});
  }
  out["migrations"] = migrations;
  if (as_json) {
    fmt::print("{}\n", json_text(out, 2));
    return kExitOk;
  }
  if (config->database.url.empty())
    fmt::print("embedded cluster {}: {}\n", out["data_dir"].get<std::string>(),
               out["running"].get<bool>()
                   ? fmt::format("running (pid {})", out["postmaster_pid"].get<int>())
                   : (out["initialized"].get<bool>() ? "stopped" : "not initialized"));
  if (migrations.is_array())
    for (const auto& m : migrations)
      fmt::print("{:04}_{}  {}\n", m["version"].get<int>(), m["name"].get<std::string>(),
                 m["state"].get<std::string>());
  return kExitOk;
}

int db_stop(const Globals& g) {
  auto config = effective_config(g);
  if (!config) {
    print_error(config.error());
    return kExitFailure;
  }
  if (!config->database.url.empty()) {
    fmt::print(stderr, "flowreg: database.url is set; `db stop` only stops the embedded cluster\n");
    return kExitFailure;
  }
  auto cluster = detail::EmbeddedCluster::open(config->database.data_dir);
  auto stopped = cluster ? cluster->stop() : tl::unexpected(cluster.error());
  if (!stopped) {
    print_error(stopped.error());
    return kExitFailure;
  }
  fmt::print("embedded cluster {} stopped\n", cluster->data_dir().string());
  return kExitOk;
}

// The run store on the configured database, migrated (migrations apply on first use).
struct Database {
  std::string url;
  detail::RunStore store;
};

Result<Database> open_database(const Config& config) {
  auto url = database_url(config);
  if (!url) return tl::unexpected(std::move(url.error()));
  if (auto migrated = detail::migrate(*url); !migrated) return tl::unexpected(migrated.error());
  auto store = detail::RunStore::connect(*url);
  if (!store) return tl::unexpected(std::move(store.error()));
  return Database{std::move(*url), std::move(*store)};
}

std::string iso_time(const detail::TimePoint& t) {
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::seconds>(t));
}

json to_ordered(const nlohmann::json& j) { return json::parse(json_text(j)); }

// The documented JSON form of a run (README, "runs").
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

json step_json(const detail::StepInfo& s) {
  return {{"slug", s.slug},
          {"kind", s.kind},
          {"status", s.status},
          {"tasks", s.task_count},
          {"attempts", s.attempts},
          {"started_at", s.started_at ? json(iso_time(*s.started_at)) : json(nullptr)},
          {"finished_at", s.finished_at ? json(iso_time(*s.finished_at)) : json(nullptr)},
          {"error", s.error ? json(*s.error) : json(nullptr)},
          {"output", s.output ? to_ordered(*s.output) : json(nullptr)}};
}

void print_run_text(const detail::RunInfo& r) {
  fmt::print("run {}  flow={} version={}  {}\n", r.id, r.flow_slug, r.flow_version,
             detail::to_string(r.status));
  if (r.output) fmt::print("output: {}\n", json_text(*r.output));
  if (r.error) fmt::print("error: {}\n", *r.error);
}

struct RunArgs {
  std::string slug, input = "{}", idempotency_key, timeout;
  bool wait = false, as_json = false;
};

int run_flow(const Globals& g, const RunArgs& a) {
  auto catalog = load_catalog(g);
  if (!catalog) {
    print_error(catalog.error());
    return kExitFailure;
  }
  const FlowRef flow = catalog->registry->get(a.slug);
  if (!flow) {
    fmt::print(stderr, "flowreg: no flow with slug '{}'\n", a.slug);
    return kExitFailure;
  }
  std::optional<Millis> timeout;
  if (!a.timeout.empty() && !(timeout = parse_duration(a.timeout, kMaxCommandDuration))) {
    fmt::print(stderr, "flowreg: --timeout {}\n", duration_problem(a.timeout, kMaxCommandDuration));
    return kExitUsage;
  }
  // The input, checked before anything is written.
  std::string input_text = a.input;
  if (input_text.starts_with('@')) {
    auto read = detail::read_text_file(input_text.substr(1), 64u << 20);
    if (!read) {
      fmt::print(stderr, "flowreg: --input {}\n", read.error().format());
      return kExitFailure;
    }
    input_text = std::move(*read);
  }
  // The same nesting limit as YAML files, checked on the text before anything recurses into it.
  const int max_depth = detail::YamlLimits{}.max_depth;
  if (auto at = detail::nesting_beyond(input_text, static_cast<std::size_t>(max_depth))) {
    fmt::print(stderr, "flowreg: --input nests deeper than {} levels (line {}, column {})\n",
               max_depth, at->line, at->column);
    return kExitFailure;
  }
  nlohmann::json input;
  try {
    input = nlohmann::json::parse(input_text);
  } catch (const nlohmann::json::exception& e) {
    fmt::print(stderr, "flowreg: --input is not valid JSON: {}\n", valid_text(e.what()));
    return kExitFailure;
  }
  if (flow->def.input_schema) {
    auto schema = detail::JsonSchema::compile(*flow->def.input_schema);
    if (!schema) {
      print_error(schema.error());
      return kExitFailure;
    }
    const auto problems = schema->validate(input);
    for (const auto& p : problems)
      fmt::print(stderr, "flowreg: input of flow '{}': {}\n", a.slug, p.message);
    if (!problems.empty()) return kExitFailure;
  }
  auto db = open_database(catalog->config);
  if (!db) {
    print_error(db.error());
    return kExitFailure;
  }
  if (auto stored = db->store.upsert_flow(flow->def, flow->version); !stored) {
    print_error(stored.error());
    return kExitFailure;
  }
  // Listen before starting, so that the end of a quick run cannot be missed.
  std::optional<detail::Listener> listener;
  if (a.wait) {
    auto l = detail::Listener::connect(db->url, {std::string(detail::kRunsChannel)});
    if (l) listener = std::move(*l);  // without it, polling alone still works
  }
  detail::StartOptions options;
  if (!a.idempotency_key.empty()) options.idempotency_key = a.idempotency_key;
  auto id = db->store.start_run(a.slug, flow->version, input, options);
  if (!id) {
    print_error(id.error());
    return kExitFailure;
  }
  auto info = db->store.get_run(*id);
  if (!info || !*info) {
    print_error(info ? Error{Errc::not_found, "the run vanished", {}} : info.error());
    return kExitFailure;
  }
  const bool live = a.wait && !a.as_json && isatty(STDOUT_FILENO);
  const auto deadline = timeout ? std::chrono::steady_clock::now() + *timeout
                                : std::chrono::steady_clock::time_point::max();
  std::string last_progress;
  while (a.wait && (*info)->status == detail::RunStatus::started) {
    if (std::chrono::steady_clock::now() >= deadline) {
      fmt::print(stderr, "flowreg: run {} still running after {}\n", *id, a.timeout);
      return kExitFailure;
    }
    if (live) {
      auto steps = db->store.run_steps(*id);
      if (steps) {
        std::string progress;
        for (const auto& s : *steps) progress += fmt::format("{}:{} ", s.slug, s.status);
        if (progress != last_progress) fmt::print("{}\n", progress);
        last_progress = std::move(progress);
      }
    }
    // NOTIFY wakes us at once; the poll is the fallback.
    if (listener && !listener->connection_lost())
      (void)listener->wait(Millis{1000});
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    info = db->store.get_run(*id);
    // The server went away (a restart, a crash and its recovery): reconnect as a worker does,
    // with backoff from 50 ms doubling to 5 s, and keep waiting.
    Millis backoff{50};
    bool reconnecting = false;
    while (!info &&
           (info.error().code == Errc::unavailable ||
            (!reconnecting && db->store.connection_lost())) &&
           std::chrono::steady_clock::now() < deadline) {
      if (!reconnecting)
        fmt::print(stderr,
                   "flowreg: lost the database while waiting for run {} ({}); reconnecting\n", *id,
                   info.error().message);
      reconnecting = true;
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
          backoff, deadline - std::chrono::steady_clock::now()));
      backoff = std::min(backoff * 2, Millis{5000});
      auto store = detail::RunStore::connect(db->url);
      if (!store) {
        info = tl::unexpected(std::move(store.error()));
        continue;
      }
      db->store = std::move(*store);
      if (a.wait) {
        auto l = detail::Listener::connect(db->url, {std::string(detail::kRunsChannel)});
        listener.reset();
        if (l) listener = std::move(*l);
      }
      info = db->store.get_run(*id);
    }
    if (reconnecting && info) fmt::print(stderr, "flowreg: reconnected; still waiting\n");
    if (!info || !*info) {
      print_error(info ? Error{Errc::not_found, "the run vanished", {}} : info.error());
      return kExitFailure;
    }
  }
  const detail::RunInfo& r = **info;
  if (a.as_json)
    fmt::print("{}\n", json_text(run_json(r), 2));
  else
    print_run_text(r);
  return r.status == detail::RunStatus::completed || r.status == detail::RunStatus::started
             ? kExitOk
             : kExitFailure;
}

// Runs a command against the store of the effective configuration.
template <class F>
int with_store(const Globals& g, F&& fn) {
  auto config = effective_config(g);
  auto db = config ? open_database(*config) : tl::unexpected(config.error());
  if (!db) {
    print_error(db.error());
    return kExitFailure;
  }
  return fn(db->store);
}

int report(const Error& e) {
  print_error(e);
  return kExitFailure;
}

// What a worker's flow owner builds each time it starts: the plugins (watched when
// plugins.watch), and the configuration's YAML flows as one module. A YAML flow whose handlers no
// plugin exports is registered but not served (the worker says so).
detail::FlowSourceFactory worker_source(Config config) {
  return [config]() -> Result<detail::FlowSource> {
    auto catalog = load_plugins(config, true);
    if (!catalog) return tl::unexpected(std::move(catalog.error()));
    if (!config.flows.empty()) {
      auto registered = catalog->registry->register_module(
          Module{config.module, config.file.string(), config.flows, nullptr});
      if (!registered) return tl::unexpected(std::move(registered.error()));
    }
    if (config.plugins.watch) {
      if (auto watching = catalog->loader->watch(); !watching)
        spdlog::warn("not watching {} for new plugins: {}", config.plugins.dir.string(),
                     watching.error().format());
    }
    return detail::FlowSource{std::move(catalog->registry), std::move(catalog->loader)};
  };
}

int worker(const Globals& g, const WorkerArgs& args) {
  auto config = effective_config(g);
  auto db = config ? open_database(*config) : tl::unexpected(config.error());
  if (!db) return report(db.error());
  return worker_command(*config, db->url, worker_source(*config), args);
}

}  // namespace

int run(int argc, char** argv) {
  // Logs go to stderr: stdout carries the commands' output (JSON, DOT) and nothing else.
  spdlog::set_default_logger(spdlog::stderr_color_mt("flowreg"));
  CLI::App app{"flowreg: a registry of flows loaded from plugins and YAML, and their runner"};
  app.require_subcommand(1);
  Globals g;
  app.add_option(
         "--config", g.config_file,
         "Configuration file (default: ./flowreg.yaml when present, else built-in defaults)")
      ->check(CLI::ExistingFile);
  app.add_option("--plugins", g.plugins_dir, "Plugins directory (overrides the configuration)");
  app.add_option("--log-level", g.log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.add_flag("--allow-unsafe-plugins", g.allow_unsafe_plugins,
               "Load plugin files and directories that others can write or that another user owns");

  int status = kExitOk;
  auto* flows = app.add_subcommand("flows", "Inspect and validate flows");
  flows->require_subcommand(1);

  bool list_json = false;
  auto* list = flows->add_subcommand("list", "List every registered flow");
  list->add_flag("--json", list_json, "Print a JSON array (fields: see README)");
  list->callback([&] { status = flows_list(g, list_json); });

  std::string show_slug;
  bool show_json = false, show_dot = false;
  auto* show = flows->add_subcommand("show", "Show one flow");
  show->add_option("slug", show_slug, "Flow slug")->required();
  auto* json_flag = show->add_flag("--json", show_json, "Print JSON");
  show->add_flag("--dot", show_dot, "Print the DAG as Graphviz DOT")->excludes(json_flag);
  show->callback([&] { status = flows_show(g, show_slug, show_json, show_dot); });

  std::vector<std::string> validate_paths;
  auto* validate = flows->add_subcommand("validate", "Validate flowreg YAML files");
  validate->add_option("paths", validate_paths, "Files to validate")->required();
  validate->callback([&] { status = flows_validate(validate_paths); });

  auto* plugins = app.add_subcommand("plugins", "Inspect and check plugin files");
  plugins->require_subcommand(1);
  bool plugins_list_json = false;
  auto* plist =
      plugins->add_subcommand("list", "Every file of the plugins directory and its status");
  plist->add_flag("--json", plugins_list_json, "Print a JSON array (fields: see README)");
  plist->callback([&] { status = plugins_list(g, plugins_list_json); });
  std::vector<std::string> check_files;
  bool check_json = false;
  auto* pcheck = plugins->add_subcommand("check", "Would these files load? Exit 0 if all would");
  pcheck->add_option("files", check_files, "Plugin files")->required();
  pcheck->add_flag("--json", check_json, "Print a JSON array");
  pcheck->callback([&] { status = plugins_check(g, check_files, check_json); });

  RunArgs run_args;
  auto* run_cmd = app.add_subcommand("run", "Start a run of a flow");
  run_cmd->add_option("slug", run_args.slug, "Flow slug")->required();
  run_cmd->add_option("--input", run_args.input, "The run's input: JSON, or @FILE (default {})");
  run_cmd->add_flag("--wait", run_args.wait,
                    "Return when the run ends (exit 0 completed, 1 failed)");
  run_cmd->add_option("--timeout", run_args.timeout,
                      "With --wait: give up after this long (30s, 5m, 24h; at most 876600h)");
  run_cmd->add_option("--idempotency-key", run_args.idempotency_key,
                      "A second start with the same key and input returns the first run; with "
                      "another input it is refused");
  run_cmd->add_flag("--json", run_args.as_json, "Print {id, flow, status, output, error, ...}");
  run_cmd->callback([&] { status = run_flow(g, run_args); });

  auto* runs = app.add_subcommand("runs", "List, show, cancel, retry and prune runs");
  runs->require_subcommand(1);
  std::string runs_flow, runs_status, runs_id, prune_age;
  bool runs_json = false;
  int runs_limit = 100;
  auto* rlist = runs->add_subcommand("list", "Runs, newest first");
  rlist->add_option("--flow", runs_flow, "Only runs of this flow");
  rlist->add_option("--status", runs_status, "started, completed, failed or cancelled")
      ->check(CLI::IsMember({"started", "completed", "failed", "cancelled"}));
  rlist->add_option("--limit", runs_limit, "At most this many (default 100)")
      ->check(CLI::Range(1, 100000));
  rlist->add_flag("--json", runs_json, "Print a JSON array");
  rlist->callback([&] {
    status = with_store(g, [&](detail::RunStore& store) {
      detail::RunFilter filter;
      if (!runs_flow.empty()) filter.flow_slug = runs_flow;
      if (!runs_status.empty()) filter.status = detail::parse_run_status(runs_status);
      filter.limit = runs_limit;
      auto listed = store.list_runs(filter);
      if (!listed) return report(listed.error());
      json out = json::array();
      for (const auto& r : *listed) {
        if (runs_json)
          out.push_back(run_json(r));
        else
          fmt::print("{}  {:<24} {:<10} {}\n", r.id, r.flow_slug, detail::to_string(r.status),
                     iso_time(r.created_at));
      }
      if (runs_json) fmt::print("{}\n", json_text(out, 2));
      return kExitOk;
    });
  });
  auto* rshow = runs->add_subcommand("show", "One run and each of its steps");
  rshow->add_option("id", runs_id, "Run id")->required();
  rshow->add_flag("--json", runs_json, "Print JSON");
  rshow->callback([&] {
    status = with_store(g, [&](detail::RunStore& store) {
      auto info = store.get_run(runs_id);
      if (!info) return report(info.error());
      if (!*info) return report(Error{Errc::not_found, fmt::format("no run {}", runs_id), {}});
      auto steps = store.run_steps(runs_id);
      if (!steps) return report(steps.error());
      if (runs_json) {
        json out = run_json(**info);
        out["steps"] = json::array();
        for (const auto& s : *steps) out["steps"].push_back(step_json(s));
        fmt::print("{}\n", json_text(out, 2));
        return kExitOk;
      }
      print_run_text(**info);
      for (const auto& s : *steps)
        fmt::print("  {:<16} {:<6} {:<10} tasks={} attempts={}{}\n", s.slug, s.kind, s.status,
                   s.task_count, s.attempts, s.error ? "  error: " + *s.error : "");
      return kExitOk;
    });
  });
  auto* rcancel = runs->add_subcommand("cancel", "Cancel a running run");
  rcancel->add_option("id", runs_id, "Run id")->required();
  rcancel->callback([&] {
    status = with_store(g, [&](detail::RunStore& store) {
      auto cancelled = store.cancel_run(runs_id);
      if (!cancelled) return report(cancelled.error());
      fmt::print("{}\n", *cancelled ? "cancelled" : "not running (nothing to cancel)");
      return *cancelled ? kExitOk : kExitFailure;
    });
  });
  auto* rretry = runs->add_subcommand("retry", "Run a failed or cancelled run again, as a new run");
  rretry->add_option("id", runs_id, "Run id")->required();
  rretry->callback([&] {
    status = with_store(g, [&](detail::RunStore& store) {
      auto fresh = store.retry_run(runs_id);
      if (!fresh) return report(fresh.error());
      fmt::print("{}\n", *fresh);
      return kExitOk;
    });
  });
  auto* rprune = runs->add_subcommand("prune", "Delete finished runs older than a duration");
  rprune
      ->add_option("--older-than", prune_age,
                   "A duration: 30m, 12h, 720h (at most 876600h, 100 years)")
      ->required();
  rprune->callback([&] {
    // Checked before anything connects. Retention is not a flow option: no 7-day limit.
    const auto age = parse_duration(prune_age, kMaxCommandDuration);
    if (!age) {
      status = report(Error{Errc::invalid_argument,
                            "--older-than " + duration_problem(prune_age, kMaxCommandDuration),
                            {}});
      return;
    }
    status = with_store(g, [&](detail::RunStore& store) {
      auto pruned = store.prune(*age);
      if (!pruned) return report(pruned.error());
      fmt::print("{} run(s) pruned\n", *pruned);
      return kExitOk;
    });
  });

  WorkerArgs worker_args;
  std::string worker_flows;
  auto* worker_cmd = app.add_subcommand(
      "worker", "Run flows: claim their tasks and run their handlers until SIGTERM/SIGINT");
  worker_cmd
      ->add_option("--concurrency", worker_args.concurrency,
                   "Handlers running at once (default: worker.concurrency)")
      ->check(CLI::Range(1, 1024));
  worker_cmd->add_option(
      "--flows", worker_flows,
      "Comma-separated slugs of the flows to serve (default: every loaded flow)");
  worker_cmd
      ->add_option("--batch", worker_args.batch_size,
                   "Tasks claimed per round trip (default: worker.batch_size)")
      ->check(CLI::Range(1, 1000));
  worker_cmd->add_option("--lease", worker_args.lease,
                         "Task lease, renewed while handlers run (default: worker.lease)");
  worker_cmd->add_option("--poll-interval", worker_args.poll_interval,
                         "Claim this often without notifications (default: worker.poll_interval)");
  worker_cmd->add_option(
      "--shutdown-grace", worker_args.shutdown_grace,
      "On SIGTERM, time in-flight handlers get (default: worker.shutdown_grace)");
  worker_cmd->add_option("--id", worker_args.id, "Worker id (default: HOST:PID:RANDOM)");
  worker_cmd->add_option("--max-output", worker_args.max_output,
                         "Largest handler output recorded: 16MiB, 500KB, 1048576 (default: "
                         "worker.max_output_bytes); a larger one fails its task");
  worker_cmd->add_option("--heartbeat-interval", worker_args.heartbeat_interval,
                         "How often the worker records that it lives (default: 5s)");
  worker_cmd->callback([&] {
    worker_args.flows.clear();
    std::string_view rest = worker_flows;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      std::string_view slug = rest.substr(0, comma);
      while (!slug.empty() && slug.front() == ' ') slug.remove_prefix(1);
      while (!slug.empty() && slug.back() == ' ') slug.remove_suffix(1);
      if (!slug.empty()) worker_args.flows.emplace_back(slug);
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
    status = worker(g, worker_args);
  });

  bool workers_json = false;
  auto* workers_cmd =
      app.add_subcommand("workers", "Workers seen on this database and their last heartbeat");
  workers_cmd->add_flag("--json", workers_json, "Print a JSON array");
  workers_cmd->callback([&] {
    status = with_store(
        g, [&](detail::RunStore& store) { return workers_command(store, workers_json); });
  });

  auto* db = app.add_subcommand("db", "The database: migrations and the embedded cluster");
  db->require_subcommand(1);
  db->add_subcommand("migrate", "Apply pending migrations (starts the embedded cluster if needed)")
      ->callback([&] { status = db_migrate(g); });
  bool db_status_json = false;
  auto* dstatus = db->add_subcommand("status", "The embedded cluster and the migrations");
  dstatus->add_flag("--json", db_status_json, "Print JSON");
  dstatus->callback([&] { status = db_status(g, db_status_json); });
  db->add_subcommand("stop", "Stop the embedded cluster")->callback([&] { status = db_stop(g); });

  app.parse_complete_callback([&] { spdlog::set_level(spdlog::level::from_str(g.log_level)); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  return status;
}

}  // namespace flowreg::cli
