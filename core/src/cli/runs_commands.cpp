// `flowreg runs`: list, show, cancel, retry, signal and prune runs; `flowreg events send`.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <tuple>

#include "app/forms.hpp"
#include "app/runs.hpp"
#include "cli/commands.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace {

using detail::RunStore;

struct RunsArgs {
  std::string flow, status, id, older_than, since, until, text;
  std::string name, data, key;  // runs signal, events send
  bool as_json = false;
  bool from_failed = false;  // runs retry --from-failed
  int limit = 100;
};

int runs_list(RunStore& store, const RunsArgs& a) {
  detail::RunFilter filter;
  if (!a.flow.empty()) filter.flow_slug = a.flow;
  if (a.status == "scheduled")
    filter.scheduled = true;
  else if (!a.status.empty())
    filter.status = detail::parse_run_status(a.status);
  filter.limit = a.limit;
  const auto now = std::chrono::system_clock::now();
  for (const auto& [option, text, bound] : {std::tuple{"--since", &a.since, &filter.since},
                                            std::tuple{"--until", &a.until, &filter.until}}) {
    if (text->empty()) continue;
    *bound = app::parse_time(*text, now);
    if (!*bound) {
      print_note("error", fmt::format("flowreg: {} '{}' is not a time: write 2026-01-02T03:04:05Z "
                                      "(UTC, or with an offset), 2026-01-02, or a duration ago "
                                      "such as 90m or 2h",
                                      option, app::valid_text(*text)));
      return kExitUsage;
    }
  }
  if (!a.text.empty()) filter.input_text = app::valid_text(a.text);
  // Summaries: a list never reads the inputs and outputs (`runs show` prints them).
  auto listed = store.list_run_summaries(filter);
  if (!listed) return report(listed.error());
  json out = json::array();
  for (const auto& r : *listed) {
    if (a.as_json)
      out.push_back(app::run_summary_json(r));
    else
      fmt::print("{}  {:<24} {:<10} {}{}\n", r.id, r.flow_slug,
                 app::run_status(r.status, r.scheduled), iso_time(r.created_at),
                 r.scheduled && r.start_at ? "  start at " + iso_time(*r.start_at) : "");
  }
  if (a.as_json) fmt::print("{}\n", detail::json_text(out, 2));
  return kExitOk;
}

// The most attempts `runs show` reads (the API pages through more).
constexpr int kShownAttempts = 1000;
constexpr std::size_t kAttemptErrorExcerpt = 120;

// One line per attempt of the step's tasks that took more than one attempt (or whose one attempt
// did not complete): number (and task, for a map step), outcome, start, duration, worker, error.
void print_step_attempts(const detail::StepInfo& s, std::span<const detail::AttemptRecord> all) {
  std::map<int, int> per_task;  // attempts listed per task index
  for (const auto& t : all)
    if (t.step_slug == s.slug) ++per_task[t.task_index];
  for (const auto& t : all) {
    if (t.step_slug != s.slug) continue;
    if (per_task[t.task_index] < 2 && (t.outcome == "completed" || t.outcome == "running"))
      continue;
    std::string took = "-";
    if (t.started_at && t.finished_at)
      took = fmt::format("{} ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                      *t.finished_at - *t.started_at)
                                      .count());
    fmt::print("    attempt {}{}  {:<13} {:<24}  {:>9}  worker={}{}{}\n", t.attempt,
               s.kind == "map" || s.kind == "flow_map" ? fmt::format(" task {}", t.task_index)
                                                       : std::string(),
               t.outcome, t.started_at ? app::iso_time_ms(*t.started_at) : std::string("-"), took,
               t.worker ? app::valid_text(*t.worker) : std::string("-"),
               t.error ? "  error: " + app::excerpt(*t.error, kAttemptErrorExcerpt) : "",
               t.process
                   ? "  process: " + app::task_process_text(app::task_process_json(*t.process))
                   : "");
  }
}

// For a step whose attempts are not listed: what its attempts cost in handler processes, if they
// ran in any (one attempt's facts, or the sums and peak of several).
void print_step_processes(const detail::StepInfo& s, std::span<const detail::AttemptRecord> all) {
  std::vector<const detail::TaskProcess*> ran;
  for (const auto& t : all)
    if (t.step_slug == s.slug && t.process) ran.push_back(&*t.process);
  if (ran.size() == 1) {
    fmt::print("    process: {}\n", app::task_process_text(app::task_process_json(*ran.front())));
  } else if (ran.size() > 1) {
    std::int64_t cpu_us = 0, handler_us = 0, peak_kb = 0;
    for (const auto* p : ran) {
      cpu_us += p->cpu_us;
      handler_us += p->handler_us;
      peak_kb = std::max(peak_kb, p->max_rss_kb);
    }
    fmt::print(
        "    processes: {} attempts ran in handler processes, CPU {:.2f} ms and handler "
        "{:.2f} ms in all, peak RSS up to {:.1f} MiB\n",
        ran.size(), static_cast<double>(cpu_us) / 1e3, static_cast<double>(handler_us) / 1e3,
        static_cast<double>(peak_kb) / 1024.0);
  }
}

int runs_show(RunStore& store, const RunsArgs& a) {
  auto info = store.get_run(a.id);
  if (!info) return report(info.error());
  if (!*info) return report(Error{Errc::not_found, fmt::format("no run {}", a.id), {}});
  auto steps = store.run_steps(a.id);
  if (!steps) return report(steps.error());
  auto attempts = store.task_attempts(a.id, "", kShownAttempts, 0);
  if (!attempts) return report(attempts.error());
  if (a.as_json) {
    json out = run_json(**info);
    out["steps"] = json::array();
    for (const auto& s : *steps) out["steps"].push_back(step_json(s));
    out["attempts"] = json::array();
    for (const auto& t : attempts->attempts) out["attempts"].push_back(app::attempt_json(t));
    out["attempts_total"] = attempts->total;
    fmt::print("{}\n", detail::json_text(out, 2));
    return kExitOk;
  }
  print_run_text(**info);
  for (const auto& s : *steps) {
    const std::string waits = app::step_wait_text(s);
    fmt::print("  {:<16} {:<6} {:<10} tasks={} attempts={}{}{}{}\n", s.slug, s.kind, s.status,
               s.task_count, s.attempts, s.worker ? " worker=" + *s.worker : "",
               waits.empty() ? "" : "  " + waits, s.error ? "  error: " + *s.error : "");
    if (s.attempts > s.task_count || s.status == "failed")
      print_step_attempts(s, attempts->attempts);
    else
      print_step_processes(s, attempts->attempts);
  }
  if (attempts->total > std::ssize(attempts->attempts))
    fmt::print("  (the first {} of {} attempts: GET /api/v1/runs/{}/attempts lists them all)\n",
               attempts->attempts.size(), attempts->total, a.id);
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

// The data and key of `runs signal` and `events send`, checked before anything connects.
Result<std::pair<nlohmann::json, std::optional<std::string>>> wait_args(const RunsArgs& a,
                                                                        std::string_view what) {
  if (auto named = app::check_wait_name(a.name, what); !named)
    return tl::unexpected(std::move(named.error()));
  auto data = app::check_wait_data(a.data, "--data");
  if (!data) return tl::unexpected(std::move(data.error()));
  auto key = app::check_idempotency_key(a.key);
  if (!key) return tl::unexpected(std::move(key.error()));
  return std::pair{std::move(*data), std::move(*key)};
}

int runs_signal(const Globals& g, const RunsArgs& a) {
  auto args = wait_args(a, "signal");
  if (!args) return report(args.error());
  return with_store(g, [&](RunStore& store) {
    auto sent = store.send_signal(a.id, a.name, args->first, args->second);
    if (!sent) return report(sent.error());
    fmt::print("{}\n", sent->outcome == "delivered" ? "delivered"
                       : sent->outcome == "kept"    ? "kept: its wait step has not started yet"
                                                    : "already sent with this key: nothing done");
    return kExitOk;
  });
}

int events_send(const Globals& g, const RunsArgs& a) {
  auto args = wait_args(a, "event");
  if (!args) return report(args.error());
  return with_store(g, [&](RunStore& store) {
    auto sent = store.send_event(a.name, args->first, args->second);
    if (!sent) return report(sent.error());
    if (sent->duplicate)
      fmt::print("already sent with this key (event {}, {} run(s) resumed then): nothing done\n",
                 sent->id, sent->resumed);
    else
      fmt::print("{} run(s) resumed\n", sent->resumed);
    return kExitOk;
  });
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
    // The events sent before the cutoff too (wait steps'): said only when there were some.
    auto events = store.prune_events(*age);
    if (!events) return report(events.error());
    if (*events > 0) fmt::print("{} event(s) pruned\n", *events);
    // And the buckets of rate limits idle for a day (full ones), whatever the cutoff.
    auto buckets = store.prune_rate_buckets();
    if (!buckets) return report(buckets.error());
    if (*buckets > 0) fmt::print("{} idle rate-limit bucket(s) pruned\n", *buckets);
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
  auto* runs = app.add_subcommand("runs", "List, show, cancel, retry, signal and prune runs");
  runs->require_subcommand(1);

  auto* list = runs->add_subcommand("list", "Runs, newest first");
  list->add_option("--flow", args->flow, "Only runs of this flow");
  list->add_option("--status", args->status,
                   "scheduled (a delayed run whose time is ahead), started (scheduled ones "
                   "included), completed, failed or cancelled")
      ->check(CLI::IsMember({"scheduled", "started", "completed", "failed", "cancelled"}));
  list->add_option("--limit", args->limit, "At most this many (default 100)")
      ->check(CLI::Range(1, 100000));
  list->add_option("--since", args->since,
                   "Only runs created at or after this time: 2026-01-02T03:04:05Z, 2026-01-02, "
                   "or a duration ago (2h)");
  list->add_option("--until", args->until, "Only runs created before this time (the same forms)");
  list->add_option("--text", args->text,
                   "Only runs whose input holds this text, in any case (searched among the "
                   "newest 10,000 runs of each flow, in inputs of at most 16 KiB as stored)")
      ->check(CLI::Validator(
          [](std::string& t) { return t.size() <= 200 ? std::string() : "at most 200 bytes"; },
          "TEXT", "at most 200 bytes"));
  list->add_flag("--json", args->as_json,
                 "Print a JSON array (runs as summaries, without their "
                 "inputs and outputs; `runs show --json` has them)");
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

  auto* signal = runs->add_subcommand(
      "signal", "Send a signal to a run: its wait step on it ends, the data its output");
  signal->add_option("id", args->id, "Run id")->required();
  signal->add_option("name", args->name, "Signal name (the wait step's signal:)")->required();
  signal->add_option("--data", args->data, "JSON: the wait step's output (default: null)");
  signal->add_option("--key", args->key,
                     "Idempotency key: a signal sent again with it is answered, not sent twice");
  signal->callback([&g, &exit_code, args] { exit_code = runs_signal(g, *args); });

  auto* events = app.add_subcommand("events", "Send events to the runs waiting for them");
  events->require_subcommand(1);
  auto* send = events->add_subcommand(
      "send", "Send an event: every wait step waiting for it whose match holds ends");
  send->add_option("name", args->name, "Event name (the wait steps' event:)")->required();
  send->add_option("--data", args->data,
                   "JSON: the wait steps' output, read by their match (default: null)");
  send->add_option("--key", args->key,
                   "Idempotency key: an event sent again with it is answered, not sent twice");
  send->callback([&g, &exit_code, args] { exit_code = events_send(g, *args); });

  auto* prune = runs->add_subcommand("prune", "Delete finished runs older than a duration");
  prune
      ->add_option("--older-than", args->older_than,
                   "A duration: 30m, 12h, 720h (at most 876600h, 100 years)")
      ->required();
  prune->callback([&g, &exit_code, args] { exit_code = runs_prune(g, *args); });
}

}  // namespace flowreg::cli
