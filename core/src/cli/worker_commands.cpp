// `flowreg worker` (run flows) and `flowreg workers` (the workers seen on the database).

#include <fcntl.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "app/schedules.hpp"
#include "cli/commands.hpp"
#include "flowreg/options.hpp"
#include "metrics/http_endpoint.hpp"
#include "metrics/store_metrics.hpp"
#include "util/json_text.hpp"
#include "worker/worker.hpp"

namespace flowreg::cli {

namespace {

using Clock = std::chrono::steady_clock;

// `flowreg worker` replaced itself (handlers that timed out hold its threads; see
// Engine::replacement_due): with --no-reexec it exits with this status (EX_TEMPFAIL), for its
// supervisor to start a new one; else it re-executes itself.
constexpr int kExitReplaced = 75;

struct WorkerArgs {
  std::vector<std::string> flows;                    // overrides worker.flows
  int concurrency = 0;                               // 0: worker.concurrency
  int batch_size = 0;                                // 0: worker.batch_size
  std::string lease, poll_interval, shutdown_grace;  // durations; "": the configuration's
  std::string id;                                    // "": HOST:PID:RANDOM
  std::string isolation;                             // "thread", "process"; "": the configuration's
  std::string max_output;          // a size ("16MiB", "500KB", "1048576"); "": the configuration's
  std::string heartbeat_interval;  // a duration; "": 5s
  std::string metrics;             // HOST:PORT to serve /metrics on; "": none
  bool no_reexec = false;          // replacing itself: exit kExitReplaced, do not re-execute
  bool no_retention = false;       // take no part in retention (worker.retention.enabled false)
};

Result<Millis> duration_or(const std::string& text, Millis fallback, std::string_view option) {
  if (text.empty()) return fallback;
  auto d = parse_duration(text);
  if (!d)
    return make_error(Errc::invalid_argument, fmt::format("{} {}", option, duration_problem(text)));
  return *d;
}

// "1048576", "500KB", "16MiB" (KB/MB/GB: powers of 1000; KiB/MiB/GiB: of 1024; B: bytes).
std::optional<std::int64_t> parse_size(std::string_view text) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 12) return std::nullopt;
  std::int64_t n = std::stoll(std::string(text.substr(0, digits)));
  const std::string_view unit = text.substr(digits);
  static constexpr std::pair<std::string_view, std::int64_t> kUnits[] = {
      {"", 1},
      {"B", 1},
      {"KB", 1000},
      {"MB", 1000 * 1000},
      {"GB", 1000000000},
      {"KiB", 1 << 10},
      {"MiB", 1 << 20},
      {"GiB", std::int64_t{1} << 30}};
  for (const auto& [name, factor] : kUnits)
    if (unit == name) return n * factor;
  return std::nullopt;
}

// The signal received within `timeout`, or 0.
int wait_signal(const sigset_t& set, Millis timeout) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  ts.tv_nsec = static_cast<long>((timeout.count() % 1000) * 1'000'000);
  const int sig = sigtimedwait(&set, nullptr, &ts);
  return sig > 0 ? sig : 0;
}

std::string keys_text(const std::vector<detail::FlowKey>& keys) {
  std::vector<std::string> parts;
  for (const auto& k : keys) parts.push_back(detail::label(k));
  return parts.empty() ? std::string("none yet") : fmt::format("{}", fmt::join(parts, ", "));
}

// The command line of this process, or nothing when it cannot be read.
std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<std::string> args;
  for (std::size_t at = 0; at < all.size();) {
    const std::size_t end = std::min(all.find('\0', at), all.size());
    args.push_back(all.substr(at, end - at));
    at = end + 1;
  }
  return args;
}

// Replaces this process by a new run of the same command line (same pid): the threads of handlers
// that never returned end with the old image. Returns only when that failed. Descriptors other
// than stdin, stdout and stderr are closed at exec (a metrics listener, what plugins opened); the
// signal mask is kept (SIGINT and SIGTERM stay pending for the new worker).
void reexecute_self() {
  const auto args = own_command_line();
  if (args.empty()) return;
  std::error_code ec;
  std::vector<int> fds;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    int fd = -1;
    try {
      fd = std::stoi(e.path().filename().string());
    } catch (const std::exception&) {
      continue;
    }
    if (fd > 2) fds.push_back(fd);
  }
  for (const int fd : fds) {
    const int flags = fcntl(fd, F_GETFD);
    if (flags >= 0) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
  }
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv("/proc/self/exe", argv.data());
}

// Runs a worker until SIGTERM or SIGINT (graceful: in-flight handlers get shutdown_grace, a second
// signal cuts it short) or until its supervision tree gives up. Exit code 0 after a signal, 1 on
// failure. Does not return normally when handlers were left running: exits the process.
// Stores the schedules the configuration file declares, and removes those it no longer declares
// (app::sync_schedules); kExitFailure, reported, when the database refuses.
int sync_file_schedules(const Config& config, const std::string& conninfo) {
  auto store = detail::RunStore::connect(conninfo);
  if (!store) return report(store.error());
  auto synced = app::sync_schedules(*store, config);
  if (!synced) return report(synced.error());
  if (synced->stored > 0 || !synced->removed.empty())
    print_note("info",
               fmt::format("flowreg worker: schedules of {}: {} stored, {} removed{}{}",
                           config.file.empty() ? "the defaults" : config.file.string(),
                           synced->stored, synced->removed.size(),
                           synced->removed.empty() ? "" : ": ", fmt::join(synced->removed, ", ")));
  return kExitOk;
}

int worker_command(const Config& config, const std::string& conninfo,
                   detail::FlowSourceFactory source, const WorkerArgs& args) {
  // The configuration's worker: section, then the command line's options over it.
  detail::WorkerOptions options = app::worker_options(config, conninfo);
  options.worker_id = args.id;
  if (args.concurrency > 0) options.concurrency = args.concurrency;
  if (args.no_retention) options.retention.reset();
  if (args.batch_size > 0) options.batch_size = args.batch_size;
  if (!args.flows.empty()) options.flows = args.flows;
  auto lease = duration_or(args.lease, config.worker.lease, "--lease");
  auto poll = duration_or(args.poll_interval, config.worker.poll_interval, "--poll-interval");
  auto grace = duration_or(args.shutdown_grace, config.worker.shutdown_grace, "--shutdown-grace");
  for (auto* r : {&lease, &poll, &grace})
    if (!*r) {
      print_note("error", fmt::format("flowreg: {}", r->error().message));
      return kExitUsage;
    }
  options.lease = *lease;
  options.poll_interval = *poll;
  auto heartbeat =
      duration_or(args.heartbeat_interval, options.heartbeat_interval, "--heartbeat-interval");
  if (!heartbeat) {
    print_note("error", fmt::format("flowreg: {}", heartbeat.error().message));
    return kExitUsage;
  }
  options.heartbeat_interval = *heartbeat;
  if (!args.isolation.empty()) options.isolation = *parse_isolation(args.isolation);
  if (!args.max_output.empty()) {
    auto size = parse_size(args.max_output);
    if (!size || *size <= 0 || *size > static_cast<std::int64_t>(detail::Engine::kMaxOutputBytes)) {
      print_note("error", fmt::format("flowreg: --max-output '{}' is not a size from 1 byte to "
                                      "128MiB (1048576, 500KB, 16MiB)",
                                      args.max_output));
      return kExitUsage;
    }
    options.max_output_bytes = static_cast<std::size_t>(*size);
  }

  // Signals are taken synchronously by this thread; every thread started from here inherits the
  // mask, so no handler thread is interrupted by them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigset_t started_mask;  // restored for a re-execution
  pthread_sigmask(SIG_BLOCK, &signals, &started_mask);

  // Prometheus metrics: the worker's own, and runs and tasks read from the store at scrape time.
  std::unique_ptr<detail::metrics::StoreMetrics> store_metrics;
  std::unique_ptr<detail::metrics::HttpEndpoint> endpoint;
  detail::metrics::set_recording(!args.metrics.empty());  // nothing would read them
  if (!args.metrics.empty()) {
    auto started = detail::metrics::HttpEndpoint::start(args.metrics);
    if (!started) {
      print_note("error", fmt::format("flowreg: {}", started.error().message));
      return started.error().code == Errc::invalid_argument ? kExitUsage : kExitFailure;
    }
    endpoint = std::move(*started);
    store_metrics = std::make_unique<detail::metrics::StoreMetrics>(conninfo);
    print_note("info",
               fmt::format("flowreg worker: metrics on http://{}/metrics", endpoint->address()));
  }

  // The file's schedules, stored before the worker fires any (docs/schedules.md).
  if (auto synced = sync_file_schedules(config, conninfo); synced != kExitOk) return synced;

  const int concurrency = options.concurrency;
  const int batch_size = options.batch_size;
  auto worker = detail::Worker::start(std::move(options), std::move(source));
  if (!worker) {
    print_note("error", fmt::format("flowreg: worker: {}", worker.error().format()));
    return kExitFailure;
  }
  // Announced once its heartbeat names what it serves (bounded: the database may be slow or
  // away), so that `flowreg workers` run after this line lists it with those flows.
  (void)(*worker)->await_heartbeat(Millis(5000));
  print_note("info",
             fmt::format("flowreg worker {}: serving {}; concurrency {}, batch {}", (*worker)->id(),
                         keys_text((*worker)->serving()), concurrency, batch_size));

  int sig = 0;
  std::optional<Error> failure;
  std::optional<std::string> replace;
  while (!(sig = wait_signal(signals, Millis(200)))) {
    if ((failure = (*worker)->wait_failure(Millis(0)))) break;
    if ((replace = (*worker)->replacement_due())) break;
  }

  int exit_code = kExitOk;
  if (failure) {
    print_note("error",
               fmt::format("flowreg: worker {} failed: {}", (*worker)->id(), failure->format()));
    exit_code = kExitFailure;
  } else if (replace) {
    // A process exec is the only way to end threads held by handlers that never return.
    print_note(
        "error",
        fmt::format("flowreg worker {}: replacing itself: {}; draining (up to {} ms), then {}",
                    (*worker)->id(), *replace, grace->count(),
                    args.no_reexec ? fmt::format("exiting with status {}", kExitReplaced)
                                   : std::string("re-executing itself")));
    (*worker)->begin_replacing();
    exit_code = kExitReplaced;
  } else {
    print_note("info", fmt::format("flowreg worker {}: {} received, draining (up to {} ms; {} "
                                   "again to stop now)",
                                   (*worker)->id(), sig == SIGINT ? "SIGINT" : "SIGTERM",
                                   grace->count(), sig == SIGINT ? "SIGINT" : "SIGTERM"));
  }
  (*worker)->begin_drain();
  const auto deadline = Clock::now() + (failure ? Millis(0) : *grace);
  bool told_to_stop = false;  // a signal during the drain: stop now, and do not come back
  while ((*worker)->held() > 0 && Clock::now() < deadline) {
    if (wait_signal(signals, Millis(50))) {
      told_to_stop = true;
      break;
    }
  }
  if (replace && told_to_stop) exit_code = kExitOk;
  const detail::DrainReport report = (*worker)->stop(Clock::now());
  print_note("info",
             fmt::format("flowreg worker {}: stopped; {} task(s) given back unstarted, {} "
                         "interrupted",
                         (*worker)->id(), report.released_unstarted, report.released_running));
  // A signal that came meanwhile stops it for good.
  if (replace && !told_to_stop && wait_signal(signals, Millis(0))) {
    told_to_stop = true;
    exit_code = kExitOk;
  }
  if (replace && !args.no_reexec && !told_to_stop) {
    print_note("info", fmt::format("flowreg worker {}: re-executing itself (pid {})",
                                   (*worker)->id(), static_cast<int>(getpid())));
    spdlog::shutdown();
    std::fflush(stdout);
    std::fflush(stderr);
    // The new image starts as this one did (its children, such as plugin checks, get the mask it
    // started with); it blocks SIGINT and SIGTERM again before waiting for them.
    pthread_sigmask(SIG_SETMASK, &started_mask, nullptr);
    reexecute_self();
    print_note("error", fmt::format("flowreg worker {}: cannot re-execute itself: {}; exiting with "
                                    "status {}",
                                    (*worker)->id(), std::strerror(errno), kExitReplaced));
  }
  spdlog::shutdown();
  std::fflush(stdout);
  std::fflush(stderr);
  // Handlers still running (they cannot be interrupted) must not run on into static destructors.
  std::_Exit(exit_code);
}

// Prints the workers recorded in the database (flowreg.workers).
int workers_command(detail::RunStore& store, bool as_json) {
  auto workers = store.list_workers();
  if (!workers) {
    fmt::print(stderr, "flowreg: {}\n", workers.error().format());
    return kExitFailure;
  }
  if (as_json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const auto& w : *workers) out.push_back(worker_json(w));
    fmt::print("{}\n", detail::json_text(out, 2));
    return kExitOk;
  }
  if (workers->empty()) fmt::print("no worker has run on this database\n");
  for (const auto& w : *workers) {
    std::vector<detail::FlowKey> keys = w.flows;
    fmt::print("{}  {}  heartbeat {:.1f}s ago  concurrency {}  flows: {}\n", w.id, worker_status(w),
               static_cast<double>(w.heartbeat_age.count()) / 1000.0, w.concurrency,
               keys_text(keys));
    if (const std::string processes = handler_processes_text(worker_json(w)["handler_processes"]);
        !processes.empty())
      fmt::print("  handler processes: {}\n", processes);
  }
  return kExitOk;
}

// What a worker's flow owner builds each time it starts: the flow catalogue with YAML flows
// registered even when a handler does not resolve (the worker does not serve those and says so),
// the plugins directory watched when plugins.watch.
detail::FlowSourceFactory worker_source(Config config) {
  return [config]() -> Result<detail::FlowSource> {
    auto catalog = load_catalog(config, detail::UnresolvedHandlers::accept);
    if (!catalog) return tl::unexpected(std::move(catalog.error()));
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

// "a, b,c" -> {"a", "b", "c"}: the slugs of --flows, blanks around them and empty ones dropped.
std::vector<std::string> slug_list(std::string_view rest) {
  std::vector<std::string> slugs;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    std::string_view slug = rest.substr(0, comma);
    while (!slug.empty() && slug.front() == ' ') slug.remove_prefix(1);
    while (!slug.empty() && slug.back() == ' ') slug.remove_suffix(1);
    if (!slug.empty()) slugs.emplace_back(slug);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  return slugs;
}

struct WorkerGroupArgs {
  WorkerArgs worker;
  std::string flows;  // --flows as given
  bool workers_json = false;
  std::string forget_id;       // workers forget ID
  std::string stopped_before;  // workers forget --stopped-before DURATION
};

// `flowreg workers forget`: one worker by id, or every stopped or stale one whose last heartbeat
// is older than --stopped-before.
int workers_forget(const Globals& g, const WorkerGroupArgs& a) {
  if (a.forget_id.empty() == a.stopped_before.empty())
    return report(Error{Errc::invalid_argument,
                        "workers forget takes a worker id or --stopped-before DURATION (one of "
                        "them)",
                        {}});
  std::optional<Millis> age;
  if (!a.stopped_before.empty()) {
    age = parse_duration(a.stopped_before, kMaxCommandDuration);
    if (!age)
      return report(
          Error{Errc::invalid_argument,
                "--stopped-before " + duration_problem(a.stopped_before, kMaxCommandDuration),
                {}});
  }
  return with_store(g, [&](detail::RunStore& store) {
    if (age) {
      auto gone = store.forget_workers_before(*age);
      if (!gone) return report(gone.error());
      for (const auto& id : *gone) fmt::print("forgot {}\n", id);
      fmt::print("{} worker(s) forgotten\n", gone->size());
      return kExitOk;
    }
    auto done = store.forget_worker(a.forget_id);
    if (!done) return report(done.error());
    if (*done == detail::ForgetOutcome::unknown)
      return report(Error{Errc::not_found, fmt::format("no worker '{}'", a.forget_id), {}});
    if (*done == detail::ForgetOutcome::running)
      return report(Error{Errc::invalid_argument,
                          fmt::format("worker '{}' is running (only a stopped or stale worker "
                                      "can be forgotten)",
                                      a.forget_id),
                          {}});
    fmt::print("forgot {}\n", a.forget_id);
    return kExitOk;
  });
}

}  // namespace

void add_worker_commands(CLI::App& app, const Globals& g, int& exit_code) {
  auto args = std::make_shared<WorkerGroupArgs>();
  WorkerArgs& w = args->worker;
  auto* worker_cmd = app.add_subcommand(
      "worker", "Run flows: claim their tasks and run their handlers until SIGTERM/SIGINT");
  worker_cmd
      ->add_option("--concurrency", w.concurrency,
                   "Handlers running at once (default: worker.concurrency)")
      ->check(CLI::Range(1, 1024));
  worker_cmd->add_option(
      "--flows", args->flows,
      "Comma-separated slugs of the flows to serve (default: every loaded flow)");
  worker_cmd
      ->add_option("--batch", w.batch_size,
                   "Tasks claimed per round trip (default: worker.batch_size)")
      ->check(CLI::Range(1, 1000));
  worker_cmd->add_option("--lease", w.lease,
                         "Task lease, renewed while handlers run (default: worker.lease)");
  worker_cmd->add_option("--poll-interval", w.poll_interval,
                         "Claim this often without notifications (default: worker.poll_interval)");
  worker_cmd->add_option(
      "--shutdown-grace", w.shutdown_grace,
      "On SIGTERM, time in-flight handlers get (default: worker.shutdown_grace)");
  worker_cmd->add_option("--id", w.id, "Worker id (default: HOST:PID:RANDOM)");
  worker_cmd
      ->add_option("--isolation", w.isolation,
                   "Where handlers run unless their flow says: thread, or process (a pool of "
                   "handler processes per plugin; a crash or hang costs one task) (default: "
                   "worker.isolation, thread)")
      ->check(CLI::IsMember({"thread", "process"}));
  worker_cmd->add_option("--max-output", w.max_output,
                         "Largest handler output recorded: 16MiB, 500KB, 1048576 (default: "
                         "worker.max_output_bytes); a larger one fails its task");
  worker_cmd->add_option("--heartbeat-interval", w.heartbeat_interval,
                         "How often the worker records that it lives (default: 5s)");
  worker_cmd->add_option("--metrics", w.metrics,
                         "Serve Prometheus metrics at http://HOST:PORT/metrics (such as "
                         "127.0.0.1:9464; port 0: a free port, printed on startup)");
  worker_cmd->add_flag("--no-retention", w.no_retention,
                       "Take no part in retention: delete no ended runs (other workers may; "
                       "default: worker.retention.enabled)");
  worker_cmd->add_flag("--no-reexec", w.no_reexec,
                       "When handlers that timed out hold its threads, exit with status 75 "
                       "instead of re-executing itself (under a supervisor that restarts it)");
  worker_cmd->callback([&g, &exit_code, args] {
    args->worker.flows = slug_list(args->flows);
    exit_code = worker(g, args->worker);
  });

  auto* workers_cmd =
      app.add_subcommand("workers", "Workers seen on this database and their last heartbeat");
  workers_cmd->add_flag("--json", args->workers_json, "Print a JSON array");
  auto* forget = workers_cmd->add_subcommand(
      "forget", "Delete the record of a stopped or stale worker (a running one is refused)");
  forget->add_option("id", args->forget_id, "Worker id");
  forget->add_option("--stopped-before", args->stopped_before,
                     "Every stopped or stale worker whose last heartbeat is older than this "
                     "duration: 30m, 12h, 720h");
  forget->callback([&g, &exit_code, args] { exit_code = workers_forget(g, *args); });
  workers_cmd->callback([&g, &exit_code, args, forget] {
    if (forget->parsed()) return;  // `workers forget` ran
    exit_code = with_store(
        g, [&](detail::RunStore& store) { return workers_command(store, args->workers_json); });
  });
}

}  // namespace flowreg::cli
