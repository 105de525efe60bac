#include "cli/worker_command.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "flowreg/options.hpp"

namespace flowreg::cli {

namespace {

using Clock = std::chrono::steady_clock;

Result<Millis> duration_or(const std::string& text, Millis fallback, std::string_view option) {
  if (text.empty()) return fallback;
  auto d = parse_duration(text);
  if (!d)
    return make_error(Errc::invalid_argument, fmt::format("{} {}", option, duration_problem(text)));
  return *d;
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
  for (const auto& k : keys) parts.push_back(k.slug + "@" + k.version);
  return parts.empty() ? std::string("none yet") : fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

int worker_command(const Config& config, const std::string& conninfo,
                   detail::FlowSourceFactory source, const WorkerArgs& args) {
  detail::WorkerOptions options;
  options.conninfo = conninfo;
  options.worker_id = args.id;
  options.concurrency = args.concurrency > 0 ? args.concurrency : config.worker.concurrency;
  options.batch_size = args.batch_size > 0 ? args.batch_size : config.worker.batch_size;
  options.flows = args.flows.empty() ? config.worker.flows : args.flows;
  auto lease = duration_or(args.lease, config.worker.lease, "--lease");
  auto poll = duration_or(args.poll_interval, config.worker.poll_interval, "--poll-interval");
  auto grace = duration_or(args.shutdown_grace, config.worker.shutdown_grace, "--shutdown-grace");
  for (auto* r : {&lease, &poll, &grace})
    if (!*r) {
      fmt::print(stderr, "flowreg: {}\n", r->error().message);
      return kExitUsage;
    }
  options.lease = *lease;
  options.poll_interval = *poll;

  // Signals are taken synchronously by this thread; every thread started from here inherits the
  // mask, so no handler thread is interrupted by them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const int concurrency = options.concurrency;
  const int batch_size = options.batch_size;
  auto worker = detail::Worker::start(std::move(options), std::move(source));
  if (!worker) {
    fmt::print(stderr, "flowreg: worker: {}\n", worker.error().format());
    return kExitFailure;
  }
  fmt::print(stderr, "flowreg worker {}: serving {}; concurrency {}, batch {}\n", (*worker)->id(),
             keys_text((*worker)->serving()), concurrency, batch_size);

  int sig = 0;
  std::optional<Error> failure;
  while (!(sig = wait_signal(signals, Millis(200)))) {
    if ((failure = (*worker)->wait_failure(Millis(0)))) break;
  }

  int exit_code = kExitOk;
  if (failure) {
    fmt::print(stderr, "flowreg: worker {} failed: {}\n", (*worker)->id(), failure->format());
    exit_code = kExitFailure;
  } else {
    fmt::print(stderr,
               "flowreg worker {}: {} received, draining (up to {} ms; {} again to stop "
               "now)\n",
               (*worker)->id(), sig == SIGINT ? "SIGINT" : "SIGTERM", grace->count(),
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  }
  (*worker)->begin_drain();
  const auto deadline = Clock::now() + (failure ? Millis(0) : *grace);
  while ((*worker)->held() > 0 && Clock::now() < deadline) {
    if (wait_signal(signals, Millis(50))) break;
  }
  const detail::DrainReport report = (*worker)->stop(Clock::now());
  fmt::print(stderr,
             "flowreg worker {}: stopped; {} task(s) given back unstarted, {} interrupted\n",
             (*worker)->id(), report.released_unstarted, report.released_running);
  spdlog::shutdown();
  std::fflush(stdout);
  std::fflush(stderr);
  // Handlers still running (they cannot be interrupted) must not run on into static destructors.
  std::_Exit(exit_code);
}

int workers_command(detail::RunStore& store, bool as_json) {
  auto workers = store.list_workers();
  if (!workers) {
    fmt::print(stderr, "flowreg: {}\n", workers.error().format());
    return kExitFailure;
  }
  const auto now = std::chrono::system_clock::now();
  const auto ago = [&](detail::TimePoint t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(now - t).count();
  };
  if (as_json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const auto& w : *workers) {
      nlohmann::ordered_json flows = nlohmann::ordered_json::array();
      for (const auto& f : w.flows) flows.push_back({{"slug", f.slug}, {"version", f.version}});
      out.push_back({{"id", w.id},
                     {"host", w.host},
                     {"pid", w.pid},
                     {"concurrency", w.concurrency},
                     {"flows", flows},
                     {"stopped", w.stopped_at.has_value()},
                     {"last_heartbeat_ms_ago", ago(w.last_heartbeat_at)}});
    }
    fmt::print("{}\n", out.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
    return kExitOk;
  }
  if (workers->empty()) fmt::print("no worker has run on this database\n");
  for (const auto& w : *workers) {
    std::vector<detail::FlowKey> keys = w.flows;
    fmt::print("{}  {}  heartbeat {:.1f}s ago  concurrency {}  flows: {}\n", w.id,
               w.stopped_at ? "stopped" : "running",
               static_cast<double>(ago(w.last_heartbeat_at)) / 1000.0, w.concurrency,
               keys_text(keys));
  }
  return kExitOk;
}

}  // namespace flowreg::cli
