// `flowreg runs`: list, show, cancel, retry and prune runs.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace {

using detail::RunStore;

struct RunsArgs {
  std::string flow, status, id, older_than;
  bool as_json = false;
  bool from_failed = false;  // runs retry --from-failed
  int limit = 100;
};

int runs_list(RunStore& store, const RunsArgs& a) {
  detail::RunFilter filter;
  if (!a.flow.empty()) filter.flow_slug = a.flow;
  if (!a.status.empty()) filter.status = detail::parse_run_status(a.status);
  filter.limit = a.limit;
  auto listed = store.list_runs(filter);
  if (!listed) return report(listed.error());
  json out = json::array();
  for (const auto& r : *listed) {
    if (a.as_json)
      out.push_back(run_json(r));
    else
      fmt::print("{}  {:<24} {:<10} {}\n", r.id, r.flow_slug, detail::to_string(r.status),
                 iso_time(r.created_at));
  }
  if (a.as_json) fmt::print("{}\n", detail::json_text(out, 2));
  return kExitOk;
}

int runs_show(RunStore& store, const RunsArgs& a) {
  auto info = store.get_run(a.id);
  if (!info) return report(info.error());
  if (!*info) return report(Error{Errc::not_found, fmt::format("no run {}", a.id), {}});
  auto steps = store.run_steps(a.id);
  if (!steps) return report(steps.error());
  if (a.as_json) {
    json out = run_json(**info);
    out["steps"] = json::array();
    for (const auto& s : *steps) out["steps"].push_back(step_json(s));
    fmt::print("{}\n", detail::json_text(out, 2));
    return kExitOk;
  }
  print_run_text(**info);
  for (const auto& s : *steps)
    fmt::print("  {:<16} {:<6} {:<10} tasks={} attempts={}{}{}\n", s.slug, s.kind, s.status,
               s.task_count, s.attempts, s.worker ? " worker=" + *s.worker : "",
               s.error ? "  error: " + *s.error : "");
  return kExitOk;
}

int runs_cancel(RunStore& store, const RunsArgs& a) {
  auto cancelled = store.cancel_run(a.id);
  if (!cancelled) return report(cancelled.error());
  if (!*cancelled) {
    fmt::print(stderr, "flowreg: run {} is not running (nothing to cancel)\n", a.id);
    return kExitFailure;
  }
  fmt::print("cancelled\n");
  return kExitOk;
}

int runs_retry(RunStore& store, const RunsArgs& a) {
  auto fresh = store.retry_run(
      a.id, a.from_failed ? detail::RetryFrom::failed_step : detail::RetryFrom::start);
  if (!fresh) return report(fresh.error());
  fmt::print("{}\n", *fresh);
  return kExitOk;
}

int runs_prune(const Globals& g, const RunsArgs& a) {
  // Checked before anything connects. Retention is not a flow option: no 7-day limit.
  const auto age = parse_duration(a.older_than, kMaxCommandDuration);
  if (!age)
    return report(Error{Errc::invalid_argument,
                        "--older-than " + duration_problem(a.older_than, kMaxCommandDuration),
                        {}});
  return with_store(g, [&](RunStore& store) {
    auto pruned = store.prune(*age);
    if (!pruned) return report(pruned.error());
    fmt::print("{} run(s) pruned\n", *pruned);
    return kExitOk;
  });
}

}  // namespace

void add_runs_commands(CLI::App& app, const Globals& g, int& exit_code) {
  auto args = std::make_shared<RunsArgs>();
  // A subcommand that runs against the store.
  const auto on_store = [&g, &exit_code, args](int (*command)(RunStore&, const RunsArgs&)) {
    return [&g, &exit_code, args, command] {
      exit_code = with_store(g, [&](RunStore& store) { return command(store, *args); });
    };
  };
  auto* runs = app.add_subcommand("runs", "List, show, cancel, retry and prune runs");
  runs->require_subcommand(1);

  auto* list = runs->add_subcommand("list", "Runs, newest first");
  list->add_option("--flow", args->flow, "Only runs of this flow");
  list->add_option("--status", args->status, "started, completed, failed or cancelled")
      ->check(CLI::IsMember({"started", "completed", "failed", "cancelled"}));
  list->add_option("--limit", args->limit, "At most this many (default 100)")
      ->check(CLI::Range(1, 100000));
  list->add_flag("--json", args->as_json, "Print a JSON array");
  list->callback(on_store(runs_list));

  auto* show = runs->add_subcommand("show", "One run and each of its steps");
  show->add_option("id", args->id, "Run id")->required();
  show->add_flag("--json", args->as_json, "Print JSON");
  show->callback(on_store(runs_show));

  auto* cancel = runs->add_subcommand("cancel", "Cancel a running run");
  cancel->add_option("id", args->id, "Run id")->required();
  cancel->callback(on_store(runs_cancel));

  auto* retry = runs->add_subcommand("retry", "Run a failed or cancelled run again, as a new run");
  retry->add_option("id", args->id, "Run id")->required();
  retry->add_flag("--from-failed", args->from_failed,
                  "From the failed step of a failed run: its completed steps keep their outputs "
                  "and do not run again");
  retry->callback(on_store(runs_retry));

  auto* prune = runs->add_subcommand("prune", "Delete finished runs older than a duration");
  prune
      ->add_option("--older-than", args->older_than,
                   "A duration: 30m, 12h, 720h (at most 876600h, 100 years)")
      ->required();
  prune->callback([&g, &exit_code, args] { exit_code = runs_prune(g, *args); });
}

}  // namespace flowreg::cli
