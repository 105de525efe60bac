// `flowreg run`: start a run of a flow and, with --wait, follow it until it ends.

#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "cli/commands.hpp"
#include "config/json_schema.hpp"
#include "config/yaml_json.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace {

using SteadyClock = std::chrono::steady_clock;

struct RunArgs {
  std::string slug, input = "{}", inputs, idempotency_key, timeout, at, delay;
  bool wait = false, as_json = false, many = false;  // many: --inputs given
  std::optional<int> priority;
};

// --inputs: at most this many bytes, and runs, per command.
constexpr std::size_t kMaxInputsBytes = 256u << 20;
constexpr std::size_t kMaxInputsRuns = 100'000;
// Problems printed before the rest are only counted.
constexpr std::size_t kMaxShownProblems = 20;

// The text of --inputs: FILE (a regular file) or - (standard input), at most kMaxInputsBytes.
std::optional<std::string> inputs_text(const std::string& arg) {
  if (arg != "-") {
    auto read = detail::read_text_file(arg, kMaxInputsBytes);
    if (!read) {
      fmt::print(stderr, "flowreg: --inputs {}\n", read.error().format());
      return std::nullopt;
    }
    return std::move(*read);
  }
  std::string text;
  char chunk[65536];
  std::size_t got = 0;
  while ((got = std::fread(chunk, 1, sizeof chunk, stdin)) > 0) {
    text.append(chunk, got);
    if (text.size() > kMaxInputsBytes) {
      fmt::print(stderr, "flowreg: --inputs -: standard input holds more than {} bytes\n",
                 kMaxInputsBytes);
      return std::nullopt;
    }
  }
  if (std::ferror(stdin)) {
    fmt::print(stderr, "flowreg: --inputs -: cannot read standard input\n");
    return std::nullopt;
  }
  return text;
}

// The runs' inputs of --inputs (JSON Lines: one input per line, blank lines skipped), each
// checked as --input is, before anything is written. Prints the problems, each naming the file
// and the line, and returns nullopt when there is one.
std::optional<std::vector<nlohmann::json>> checked_inputs(const std::string& arg,
                                                          const FlowDef& flow) {
  const auto text = inputs_text(arg);
  if (!text) return std::nullopt;
  std::optional<detail::JsonSchema> schema;
  if (flow.input_schema) {
    auto compiled = detail::JsonSchema::compile(*flow.input_schema);
    if (!compiled) {
      print_error(compiled.error());
      return std::nullopt;
    }
    schema = std::move(*compiled);
  }
  const std::string file = arg == "-" ? std::string("standard input") : valid_text(arg);
  std::vector<nlohmann::json> inputs;
  std::size_t problems = 0;
  const auto problem = [&](const std::string& message) {
    if (++problems <= kMaxShownProblems) fmt::print(stderr, "flowreg: {}\n", message);
  };
  std::size_t line_no = 0;
  for (std::size_t at = 0; at < text->size();) {
    std::size_t end = text->find('\n', at);
    if (end == std::string::npos) end = text->size();
    const std::string_view line(text->data() + at, end - at);
    at = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    if (inputs.size() + problems >= kMaxInputsRuns) {
      problem(
          fmt::format("--inputs {}: more than {} inputs (line {}); start them in several "
                      "commands",
                      file, kMaxInputsRuns, line_no));
      break;
    }
    const std::string what = fmt::format("--inputs {} line {}", file, line_no);
    auto input = check_input(line, flow, what, schema ? &*schema : nullptr);
    if (input) {
      inputs.push_back(std::move(*input));
      continue;
    }
    if (input.error().details.empty()) problem(input.error().message);
    for (const auto& p : input.error().details) problem(fmt::format("{}: {}", what, p.message));
  }
  if (problems > kMaxShownProblems)
    fmt::print(stderr, "flowreg: ... and {} more problem(s)\n", problems - kMaxShownProblems);
  if (problems > 0) {
    fmt::print(stderr, "flowreg: no run started\n");
    return std::nullopt;
  }
  if (inputs.empty()) {
    fmt::print(stderr, "flowreg: --inputs {}: no input (one JSON value per line)\n", file);
    return std::nullopt;
  }
  return inputs;
}

// flowreg run SLUG --inputs FILE: one run per input, all started in one transaction, or none.
int run_many(const RunArgs& a, const FlowRef& flow, Database& db,
             std::optional<detail::TimePoint> start_at) {
  const auto inputs = checked_inputs(a.inputs, flow->def);
  if (!inputs) return kExitFailure;
  auto ids = db.store.start_runs(a.slug, flow->version, *inputs, start_at, a.priority);
  if (!ids) return report(ids.error());
  if (a.as_json) {
    fmt::print("{}\n", detail::json_text(nlohmann::json(*ids), 2));
  } else {
    for (const auto& id : *ids) fmt::print("{}\n", id);
  }
  return kExitOk;
}

// The run's input (--input: JSON, or @FILE), checked before anything is written: the nesting
// limit of YAML files, then JSON syntax, then the flow's input schema. Prints every problem and
// returns nullopt when there is one.
std::optional<nlohmann::json> checked_input(const std::string& arg, const FlowDef& flow) {
  std::string text = arg;
  if (text.starts_with('@')) {
    auto read = detail::read_text_file(text.substr(1), 64u << 20);
    if (!read) {
      fmt::print(stderr, "flowreg: --input {}\n", read.error().format());
      return std::nullopt;
    }
    text = std::move(*read);
  }
  auto input = check_input(text, flow, "--input");
  if (!input) {
    if (input.error().details.empty()) fmt::print(stderr, "flowreg: {}\n", input.error().message);
    for (const auto& p : input.error().details) fmt::print(stderr, "flowreg: {}\n", p.message);
    return std::nullopt;
  }
  return std::move(*input);
}

using RunRead = Result<std::optional<detail::RunInfo>>;

// The run of a read, or nullopt after printing why there is none.
std::optional<detail::RunInfo> existing_run(RunRead read) {
  if (read && *read) return std::move(**read);
  print_error(read ? Error{Errc::not_found, "the run vanished", {}} : read.error());
  return std::nullopt;
}

// Follows runs on a database that may go away while it waits: a NOTIFY on the runs channel wakes
// it at once, a poll is the fallback, and a lost server is reconnected to. Uses `db` (replaces its
// store on reconnection), which must outlive it. One thread; neither copied nor moved.
class RunWatch {
 public:
  // Listens from here on: construct it before starting the run, so that the end of a quick run
  // cannot be missed.
  explicit RunWatch(Database& db) : db_(db), listener_(listen(db.url)) {}
  RunWatch(const RunWatch&) = delete;
  RunWatch& operator=(const RunWatch&) = delete;

  detail::RunStore& store() { return db_.store; }

  // Returns after a notification or up to 1 s with a listener, after 200 ms without one.
  void pause() {
    if (listener_ && !listener_->connection_lost())
      (void)listener_->wait(Millis{1000});
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  // Reads the run. When the server went away (a restart, a crash and its recovery), reconnects
  // as a worker does, with backoff from 50 ms doubling to 5 s, until `deadline`.
  RunRead read(const std::string& id, SteadyClock::time_point deadline) {
    RunRead info = db_.store.get_run(id);
    Millis backoff{50};
    bool reconnecting = false;
    while (!info &&
           (info.error().code == Errc::unavailable ||
            (!reconnecting && db_.store.connection_lost())) &&
           SteadyClock::now() < deadline) {
      if (!reconnecting)
        fmt::print(stderr,
                   "flowreg: lost the database while waiting for run {} ({}); reconnecting\n", id,
                   info.error().message);
      reconnecting = true;
      std::this_thread::sleep_for(
          std::min<SteadyClock::duration>(backoff, deadline - SteadyClock::now()));
      backoff = std::min(backoff * 2, Millis{5000});
      auto store = detail::RunStore::connect(db_.url);
      if (!store) {
        info = tl::unexpected(std::move(store.error()));
        continue;
      }
      db_.store = std::move(*store);
      listener_ = listen(db_.url);
      info = db_.store.get_run(id);
    }
    if (reconnecting && info) fmt::print(stderr, "flowreg: reconnected; still waiting\n");
    return info;
  }

 private:
  // Without a listener, polling alone still works.
  static std::optional<detail::Listener> listen(const std::string& url) {
    auto listener = detail::Listener::connect(url, {std::string(detail::kRunsChannel)});
    if (!listener) return std::nullopt;
    return std::move(*listener);
  }

  Database& db_;
  std::optional<detail::Listener> listener_;
};

// Waits while `run` is started; when `live`, prints its steps' statuses each time they change.
// The run as it ended, or nullopt after printing why the wait stopped (`deadline` passed, the run
// vanished, the database stayed away).
std::optional<detail::RunInfo> wait_for_end(RunWatch& watch, detail::RunInfo run, bool live,
                                            SteadyClock::time_point deadline,
                                            const std::string& timeout_text) {
  std::string last_progress;
  while (run.status == detail::RunStatus::started) {
    if (SteadyClock::now() >= deadline) {
      fmt::print(stderr, "flowreg: run {} still running after {}\n", run.id, timeout_text);
      return std::nullopt;
    }
    if (live) {
      if (auto steps = watch.store().run_steps(run.id)) {
        std::string progress;
        for (const auto& s : *steps) progress += fmt::format("{}:{} ", s.slug, s.status);
        if (progress != last_progress) fmt::print("{}\n", progress);
        last_progress = std::move(progress);
      }
    }
    watch.pause();
    auto read = existing_run(watch.read(run.id, deadline));
    if (!read) return std::nullopt;
    run = std::move(*read);
  }
  return run;
}

int run_flow(const Globals& g, const RunArgs& a) {
  auto config = effective_config(g);
  auto catalog = config ? load_catalog(*config, detail::UnresolvedHandlers::refuse)
                        : tl::unexpected(config.error());
  if (!catalog) return report(catalog.error());
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
  // --at / --delay: checked before anything is read or written.
  auto start_at =
      app::start_time(a.at, a.delay, std::chrono::system_clock::now(), "--at", "--delay");
  if (!start_at) {
    print_error(start_at.error());
    return kExitUsage;
  }
  std::optional<nlohmann::json> input;
  if (!a.many && !(input = checked_input(a.input, flow->def))) return kExitFailure;
  detail::StartOptions options;
  auto key = app::check_idempotency_key(a.idempotency_key);
  if (!key) return report(key.error());
  options.idempotency_key = std::move(*key);
  options.start_at = *start_at;
  options.priority = a.priority;

  auto db = open_database(*config);
  if (!db) return report(db.error());
  if (a.many) {
    if (auto stored = db->store.upsert_flow(flow->def, flow->version); !stored)
      return report(stored.error());
    return run_many(a, flow, *db, *start_at);
  }
  std::optional<RunWatch> watch;
  if (a.wait) watch.emplace(*db);
  auto started = app::start_run(db->store, *flow, *input, options);
  if (!started) return report(started.error());
  std::optional<detail::RunInfo> run = std::move(*started);

  if (watch) {
    const bool live = !a.as_json && isatty(STDOUT_FILENO);
    const auto deadline = timeout ? SteadyClock::now() + *timeout : SteadyClock::time_point::max();
    run = wait_for_end(*watch, std::move(*run), live, deadline, a.timeout);
    if (!run) return kExitFailure;
  }
  if (a.as_json)
    fmt::print("{}\n", detail::json_text(run_json(*run), 2));
  else
    print_run_text(*run);
  return run->status == detail::RunStatus::completed || run->status == detail::RunStatus::started
             ? kExitOk
             : kExitFailure;
}

}  // namespace

void add_run_command(CLI::App& app, const Globals& g, int& exit_code) {
  auto args = std::make_shared<RunArgs>();
  auto* run = app.add_subcommand("run", "Start a run of a flow");
  run->add_option("slug", args->slug, "Flow slug")->required();
  auto* input =
      run->add_option("--input", args->input, "The run's input: JSON, or @FILE (default {})");
  auto* wait =
      run->add_flag("--wait", args->wait, "Return when the run ends (exit 0 completed, 1 failed)");
  auto* timeout =
      run->add_option("--timeout", args->timeout,
                      "With --wait: give up after this long (30s, 5m, 24h; at most 876600h)");
  auto* key = run->add_option("--idempotency-key", args->idempotency_key,
                              "A second start with the same key and input returns the first run; "
                              "with another input it is refused");
  auto* inputs =
      run->add_option("--inputs", args->inputs,
                      "Start one run per line of FILE (- for standard input): JSON Lines, each "
                      "checked as --input; all start in one transaction, or none; prints their ids")
          ->excludes(input)
          ->excludes(wait)
          ->excludes(timeout)
          ->excludes(key);
  run->add_option("--at", args->at,
                  "Start the run at this time (RFC 3339: 2026-11-27T18:00:00Z, or with an "
                  "offset such as +01:00); a time past starts it at once. Until then it shows "
                  "as scheduled, and may be cancelled");
  run->add_option("--delay", args->delay,
                  "Start the run after this long (250ms, 30s, 5m, 2h; at most 10 years); not "
                  "with --at");
  run->add_option("--priority", args->priority,
                  "The run's priority, -100..100, which all its tasks take instead of their "
                  "steps' (default: the flow's): claimed highest first, then oldest")
      ->check(CLI::Range(Options::kMinPriority, Options::kMaxPriority));
  run->add_flag("--json", args->as_json,
                "Print {id, flow, status, output, error, ...} (with --inputs: the ids' array)");
  run->callback([&g, &exit_code, args, inputs] {
    args->many = inputs->count() > 0;
    exit_code = run_flow(g, *args);
  });
}

}  // namespace flowreg::cli
