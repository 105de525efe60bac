#include "cli/commands.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>

#include "flowreg/config.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/flow_registry.hpp"

namespace flowreg::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

struct Globals {
  std::string config_file;
  std::string plugins_dir;
  std::string log_level = "warn";
};

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
  return config;
}

// The registry the commands see: the configuration's YAML flows, registered as one module.
Result<std::unique_ptr<FlowRegistry>> load_registry(const Globals& g) {
  auto config = effective_config(g);
  if (!config) return tl::unexpected(std::move(config.error()));
  auto registry = std::make_unique<FlowRegistry>();
  if (!config->flows.empty()) {
    auto registered = registry->register_module(
        Module{config->module, config->file.string(), std::move(config->flows), nullptr});
    if (!registered) return tl::unexpected(std::move(registered.error()));
  }
  return registry;
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
  return {
      {"slug", flow.slug},
      {"module", flow.module},
      {"version", flow_version(flow)},
      {"description", flow.description},
      {"source", flow.source.empty() ? json(nullptr) : json(flow.source)},
      {"options", options_json(flow.options)},
      {"input_schema", flow.input_schema ? json::parse(flow.input_schema->dump()) : json(nullptr)},
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
  auto registry = load_registry(g);
  if (!registry) {
    print_error(registry.error());
    return kExitFailure;
  }
  const auto flows = (*registry)->list();
  if (as_json) {
    json out = json::array();
    for (const auto& f : flows) out.push_back(flow_json(*f));
    fmt::print("{}\n", out.dump(2));
    return kExitOk;
  }
  if (flows.empty()) fmt::print(stderr, "no flows registered\n");
  for (const auto& f : flows) print_flow_text(*f);
  return kExitOk;
}

int flows_show(const Globals& g, const std::string& slug, bool as_json, bool as_dot) {
  auto registry = load_registry(g);
  if (!registry) {
    print_error(registry.error());
    return kExitFailure;
  }
  const FlowRef flow = (*registry)->get(slug);
  if (!flow) {
    fmt::print(stderr, "flowreg: no flow with slug '{}'\n", slug);
    return kExitFailure;
  }
  if (as_json)
    fmt::print("{}\n", flow_json(*flow).dump(2));
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

}  // namespace

int run(int argc, char** argv) {
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
