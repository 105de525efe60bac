// `flowreg schedules`: list, show, create, pause, resume, trigger and delete schedules
// (docs/schedules.md).

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "app/runs.hpp"
#include "app/schedules.hpp"
#include "cli/commands.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace {

using detail::RunStore;

struct SchedulesArgs {
  std::string name, flow, cron, timezone = "UTC", input = "{}", time_key = "scheduled_at";
  std::string catch_up = "latest", overlap = "allow";
  int catch_up_max = 100;
  bool paused = false;
  bool as_json = false;
  int limit = app::kMaxSchedulesListed;
  std::string after;
};

std::string when(const std::optional<detail::TimePoint>& t) { return t ? iso_time(*t) : "-"; }

int schedules_list(RunStore& store, const SchedulesArgs& a) {
  auto listed = store.list_schedules_page("", a.limit, a.after);
  if (!listed) return report(listed.error());
  const auto now = std::chrono::system_clock::now();
  if (a.as_json) {
    json out = json::array();
    for (const auto& s : *listed) out.push_back(app::schedule_json(s, now));
    fmt::print("{}\n", detail::json_text(out, 2));
    return kExitOk;
  }
  if (listed->empty()) {
    fmt::print("no schedules\n");
    return kExitOk;
  }
  fmt::print("{:<24} {:<20} {:<16} {:<16} {:<21} {}\n", "NAME", "FLOW", "CRON", "TIMEZONE", "NEXT",
             "STATUS");
  for (const auto& s : *listed)
    fmt::print("{:<24} {:<20} {:<16} {:<16} {:<21} {}\n", s.def.name, s.def.flow, s.def.cron,
               s.def.timezone, when(s.next_fire_at), app::schedule_status(s, now));
  if (std::ssize(*listed) == a.limit)
    fmt::print("(the first {}: the next ones with --after {})\n", a.limit, listed->back().def.name);
  return kExitOk;
}

int schedules_show(RunStore& store, const SchedulesArgs& a) {
  auto listed = store.list_schedules(a.name);
  if (!listed) return report(listed.error());
  if (listed->empty()) {
    fmt::print(stderr, "flowreg: no schedule named '{}'\n", app::valid_text(a.name));
    return kExitFailure;
  }
  const auto now = std::chrono::system_clock::now();
  const auto& s = listed->front();
  if (a.as_json) {
    fmt::print("{}\n", detail::json_text(app::schedule_json(s, now), 2));
    return kExitOk;
  }
  fmt::print("schedule {}\n", s.def.name);
  fmt::print("  flow:          {}\n", s.def.flow);
  fmt::print("  cron:          {} ({})\n", s.def.cron, s.def.timezone);
  fmt::print("  input:         {}\n", detail::json_text(s.def.input));
  fmt::print("  time key:      {}\n", s.def.time_key.empty() ? "(none)" : s.def.time_key);
  fmt::print("  catch-up:      {}{}\n", s.def.catch_up,
             s.def.catch_up == "all" ? fmt::format(" (at most {})", s.def.catch_up_max) : "");
  fmt::print("  overlap:       {}\n", s.def.overlap);
  fmt::print("  source:        {}\n", s.source);
  fmt::print("  status:        {}\n", app::schedule_status(s, now));
  fmt::print("  next tick:     {}\n", when(s.next_fire_at));
  fmt::print("  last tick:     {}\n", when(s.last_tick_at));
  fmt::print("  last fired:    {}\n", when(s.last_fired_at));
  fmt::print("  last run:      {}{}\n", s.last_run_id.value_or("-"),
             s.last_run_status ? " (" + *s.last_run_status + ")" : "");
  fmt::print("  last outcome:  {}\n", s.last_outcome.value_or("-"));
  fmt::print("  runs started:  {}; ticks skipped: {}\n", s.fired, s.skipped);
  return kExitOk;
}

int schedules_create(RunStore& store, const SchedulesArgs& a) {
  ScheduleDef def;
  def.name = a.name;
  def.flow = a.flow;
  def.cron = a.cron;
  def.timezone = a.timezone;
  def.time_key = a.time_key;
  def.catch_up = a.catch_up;
  def.catch_up_max = a.catch_up_max;
  def.overlap = a.overlap;
  def.paused = a.paused;
  // JSON syntax, nesting and U+0000 as a run's input; the flow's input schema is checked when a
  // worker fires it (the flow may not be loaded where the schedule is created).
  auto input = check_input(a.input, FlowDef{}, "--input", nullptr);
  if (!input) {
    fmt::print(stderr, "flowreg: {}\n", input.error().message);
    return kExitUsage;
  }
  def.input = std::move(*input);
  if (auto checked = app::check_schedule(def); !checked) {
    for (const auto& d : checked.error().details)
      fmt::print(stderr, "flowreg: schedule '{}': {}\n", app::valid_text(def.name), d.message);
    return kExitUsage;
  }
  auto saved = app::save_schedule(store, def);
  if (!saved) return report(saved.error());
  auto listed = store.list_schedules(def.name);
  if (!listed) return report(listed.error());
  fmt::print("schedule {} {}; next tick {}\n", def.name, *saved ? "created" : "updated",
             listed->empty() ? "-" : when(listed->front().next_fire_at));
  return kExitOk;
}

int schedules_pause(RunStore& store, const SchedulesArgs& a, bool paused) {
  if (auto done = app::pause_schedule(store, a.name, paused); !done) return report(done.error());
  fmt::print("{}\n", paused ? "paused" : "resumed");
  return kExitOk;
}

int schedules_delete(RunStore& store, const SchedulesArgs& a) {
  auto deleted = store.delete_schedule(a.name);
  if (!deleted) return report(deleted.error());
  if (!*deleted) {
    fmt::print(stderr, "flowreg: no schedule named '{}'\n", app::valid_text(a.name));
    return kExitFailure;
  }
  fmt::print("deleted\n");
  return kExitOk;
}

int schedules_trigger(const Globals& g, const SchedulesArgs& a) {
  auto config = effective_config(g);
  auto catalog = config ? load_catalog(*config, detail::UnresolvedHandlers::refuse)
                        : tl::unexpected(config.error());
  if (!catalog) return report(catalog.error());
  auto db = open_database(*config);
  if (!db) return report(db.error());
  auto run = app::trigger_schedule(db->store, *catalog->registry, a.name);
  if (!run) return report(run.error());
  fmt::print("{}\n", run->id);
  return kExitOk;
}

}  // namespace

void add_schedules_commands(CLI::App& app, const Globals& g, int& exit_code) {
  auto args = std::make_shared<SchedulesArgs>();
  const auto on_store = [&g, &exit_code,
                         args](std::function<int(RunStore&, const SchedulesArgs&)> f) {
    return [&g, &exit_code, args, f] {
      exit_code = with_store(g, [&](RunStore& store) { return f(store, *args); });
    };
  };
  auto* schedules = app.add_subcommand(
      "schedules", "List, show, create, pause, resume, trigger and delete schedules");
  schedules->require_subcommand(1);

  auto* list = schedules->add_subcommand("list", "Every schedule, by name, with its next tick");
  list->add_flag("--json", args->as_json, "Print a JSON array");
  list->add_option("--limit", args->limit, "At most this many (1..1000, default 1000)")
      ->check(CLI::Range(1, app::kMaxSchedulesListed));
  list->add_option("--after", args->after, "The schedules after this name (the next page)");
  list->callback(on_store(schedules_list));

  auto* show = schedules->add_subcommand("show", "One schedule: its definition and last runs");
  show->add_option("name", args->name, "Schedule name")->required();
  show->add_flag("--json", args->as_json, "Print JSON");
  show->callback(on_store(schedules_show));

  auto* create = schedules->add_subcommand(
      "create", "Create a schedule, or replace the definition of the one of that name");
  create->add_option("name", args->name, "Schedule name")->required();
  create->add_option("--flow", args->flow, "The slug of the flow it starts")->required();
  create
      ->add_option("--cron", args->cron,
                   "When: 5 fields (minute hour day month weekday), 6 with seconds first, or "
                   "@hourly, @daily, @weekly, @monthly, @yearly")
      ->required();
  create->add_option("--timezone", args->timezone, "IANA time zone (default UTC)");
  create->add_option("--input", args->input, "Each run's input, a JSON object (default {})");
  create->add_option("--time-key", args->time_key,
                     "The input key given the tick's time (default scheduled_at; '' for none)");
  create->add_option("--catch-up", args->catch_up, "none, latest (default) or all")
      ->check(CLI::IsMember({"none", "latest", "all"}));
  create
      ->add_option("--catch-up-max", args->catch_up_max,
                   "With --catch-up all: at most this many missed ticks fire (default 100)")
      ->check(CLI::Range(1, 1000));
  create->add_option("--overlap", args->overlap, "allow (default), skip or queue")
      ->check(CLI::IsMember({"allow", "skip", "queue"}));
  create->add_flag("--paused", args->paused, "Create it paused");
  create->callback(on_store(schedules_create));

  auto* pause = schedules->add_subcommand("pause", "Stop firing a schedule until resumed");
  pause->add_option("name", args->name, "Schedule name")->required();
  pause->callback(
      on_store([](RunStore& s, const SchedulesArgs& a) { return schedules_pause(s, a, true); }));
  auto* resume = schedules->add_subcommand(
      "resume", "Fire a paused schedule again, from its next tick (missed ticks do not fire)");
  resume->add_option("name", args->name, "Schedule name")->required();
  resume->callback(
      on_store([](RunStore& s, const SchedulesArgs& a) { return schedules_pause(s, a, false); }));
  auto* trigger = schedules->add_subcommand(
      "trigger", "Start a run of a schedule now, outside its cron; prints its id");
  trigger->add_option("name", args->name, "Schedule name")->required();
  trigger->callback([&g, &exit_code, args] { exit_code = schedules_trigger(g, *args); });
  auto* remove = schedules->add_subcommand("delete", "Delete a schedule (its runs stay)");
  remove->add_option("name", args->name, "Schedule name")->required();
  remove->callback(on_store(schedules_delete));
}

}  // namespace flowreg::cli
