// `flowreg flows`: list, show and validate flows.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "app/graph_svg.hpp"
#include "cli/commands.hpp"
#include "flowreg/flow.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace {

using detail::json_text;

void print_flow_text(const RegisteredFlow& registered) {
  const FlowDef& flow = registered.def;
  // A priority other than 0 (Options::priority) is shown: on the flow, and on a step of its own.
  const auto priority = [](int p) {
    return p == 0 ? std::string() : fmt::format(" priority={}", p);
  };
  // Concurrency limits per key: the flow's (runs), a step's own (tasks).
  const auto concurrency = [](const std::optional<Concurrency>& c) {
    return c ? " " + app::concurrency_text(*c) : std::string();
  };
  // Rate limits: the flow's (all its tasks), a step's own.
  const auto rate = [](const std::optional<RateLimit>& r) {
    return r ? " " + app::rate_limit_text(*r) : std::string();
  };
  const std::string retention = app::retention_text(flow.retention);
  fmt::print("{}  module={} version={}{}{}{}{}{}\n", flow.slug, flow.module, registered.version,
             priority(flow.options.priority), concurrency(flow.concurrency), rate(flow.rate_limit),
             retention.empty() ? "" : " " + retention,
             flow.description.empty() ? "" : "  " + flow.description);
  std::size_t width = 0;
  for (const auto& s : flow.steps) width = std::max(width, s.slug.size());
  for (const StepDef* s : topological_order(flow)) {
    const int own = flow.step_options(*s).priority;
    fmt::print("  {:<{}}  {:<6}  {}{}{}{}{}{}\n", s->slug, width, to_string(s->kind),
               s->sleep   ? app::sleep_text(*s->sleep)
               : s->wait  ? app::wait_text(*s->wait)
               : s->child ? app::child_text(*s->child)
                          : s->handler,
               s->depends_on.empty() ? "" : fmt::format("  <- {}", fmt::join(s->depends_on, ", ")),
               own != flow.options.priority ? fmt::format("  (priority {})", own) : "",
               s->concurrency ? fmt::format("  ({})", app::concurrency_text(*s->concurrency)) : "",
               s->rate_limit ? fmt::format("  ({})", app::rate_limit_text(*s->rate_limit)) : "",
               app::condition_suffix(*s));
  }
}

// The registry the flows commands see: the plugins, then the configuration's YAML flows as one
// module, refused when a handler they name does not resolve.
Result<detail::FlowCatalog> flows_catalog(const Globals& g) {
  auto config = effective_config(g);
  if (!config) return tl::unexpected(std::move(config.error()));
  return load_catalog(*config, detail::UnresolvedHandlers::refuse);
}

int flows_list(const Globals& g, bool as_json) {
  auto catalog = flows_catalog(g);
  if (!catalog) return report(catalog.error());
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
  auto catalog = flows_catalog(g);
  if (!catalog) return report(catalog.error());
  const FlowRef flow = catalog->registry->get(slug);
  if (!flow) {
    fmt::print(stderr, "flowreg: no flow with slug '{}'\n", slug);
    return kExitFailure;
  }
  if (as_json)
    fmt::print("{}\n", json_text(flow_json(*flow), 2));
  else if (as_dot)
    fmt::print("{}", detail::flow_dot(flow->def));  // the dashboard's picture, as DOT
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

struct FlowsArgs {
  bool list_json = false;
  std::string show_slug;
  bool show_json = false, show_dot = false;
  std::vector<std::string> validate_paths;
};

}  // namespace

void add_flows_commands(CLI::App& app, const Globals& g, int& exit_code) {
  auto args = std::make_shared<FlowsArgs>();
  auto* flows = app.add_subcommand("flows", "Inspect and validate flows");
  flows->require_subcommand(1);

  auto* list = flows->add_subcommand("list", "List every registered flow");
  list->add_flag("--json", args->list_json, "Print a JSON array (fields: see docs/cli.md)");
  list->callback([&g, &exit_code, args] { exit_code = flows_list(g, args->list_json); });

  auto* show = flows->add_subcommand("show", "Show one flow");
  show->add_option("slug", args->show_slug, "Flow slug")->required();
  auto* json_flag = show->add_flag("--json", args->show_json, "Print JSON");
  show->add_flag("--dot", args->show_dot, "Print the DAG as Graphviz DOT")->excludes(json_flag);
  show->callback([&g, &exit_code, args] {
    exit_code = flows_show(g, args->show_slug, args->show_json, args->show_dot);
  });

  auto* validate = flows->add_subcommand("validate", "Validate flowreg YAML files");
  validate->add_option("paths", args->validate_paths, "Files to validate")->required();
  validate->callback([&exit_code, args] { exit_code = flows_validate(args->validate_paths); });
}

}  // namespace flowreg::cli
