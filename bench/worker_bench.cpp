// worker_bench: `flowreg worker` processes against PostgreSQL, end to end.
//
//   worker_bench [--runs N] [--workers 1,2] [--concurrency C] [--batch B] [--samples S]
//                [--only single|chain|latency] [--timeout SECONDS] [--keep] [--metrics R]
//
// One embedded cluster in a scratch directory under /tmp, with the server's default durability
// (fsync and synchronous_commit on, as the embedded cluster configures it), and one fresh
// database per scenario (created and migrated by the project's own code), so that scenarios do not
// see each other's rows, dead tuples or workers.
//
//   burn-down   N runs of bench_single (1 task each) or bench_chain (a -> b -> c, 3 tasks each) are
//               started BEFORE any worker runs (RunStore::start_runs, 500 per call), then W worker
//               processes start, `flowreg --config CFG worker --concurrency C --batch B`, and the
//               bench times the burn-down: from spawning the workers to the last run's completion.
//               Completions are counted from the run store's own notifications (channel
//               flowreg_runs, "<run id> completed"), received on a Listener opened before the
//               workers start: no polling query competes with the workers for the 2 cores.
//               Afterwards list_runs checks that every run completed. Workers are stopped with
//               SIGTERM and waited for between scenarios.
//   latency     one worker, idle; S runs of bench_latency, started one at a time (start_run) with
//               5 ms pauses. The handler returns the CLOCK_REALTIME time it was entered; the bench
//               subtracts the time taken just before start_run.
//
//   metrics     (--metrics R, instead of the above) R rounds of two burn-downs of bench_single
//               with W = the first of --workers: without, then with `--metrics 127.0.0.1:0` (the
//               worker records its metrics; nothing scrapes them); the ratio of the two totals
//               per round is the cost the metrics add.
//
// A scenario that does not finish within --timeout (default 120 s), or whose worker exits early,
// aborts the bench with the count reached; the workers' output (stdout and stderr) is in
// <scratch>/<scenario>.worker<i>.log, and the scratch directory is kept (also with --keep).
//
// The flows come from the bench_worker plugin (bench/plugins/bench_worker.cpp), built alone into
// its own directory: the bench loads it with the project's PluginLoader to store the flow versions
// before starting runs, and the workers load the same directory.

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"
#include "store/embedded_cluster.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"

#ifndef FLOWREG_BINARY
#error "FLOWREG_BINARY must name the flowreg executable (bench/worker.cmake)"
#endif
#ifndef BENCH_WORKER_PLUGIN_DIR
#error "BENCH_WORKER_PLUGIN_DIR must name the directory of the bench_worker plugin"
#endif

extern char** environ;

namespace fs = std::filesystem;
using namespace flowreg;
using namespace flowreg::detail;

namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr int kStartChunk = 500;  // runs per start_runs call

struct Args {
  int runs = 20000;
  std::vector<int> workers{1, 2};
  int concurrency = 8;
  int batch = 64;
  int samples = 300;
  std::string only;  // "", "single", "chain" or "latency"
  int timeout_s = 120;
  bool keep = false;
  int metrics_rounds = 0;   // --metrics R
  bool metrics_on = false;  // the workers being started get --metrics 127.0.0.1:0
  std::string tag;          // appended to scenario names (metrics rounds)
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "worker_bench: %s\n"
               "usage: worker_bench [--runs N] [--workers 1,2] [--concurrency C] [--batch B]\n"
               "                    [--samples S] [--only single|chain|latency] [--timeout SECONDS]"
               " [--keep] [--metrics R]\n",
               why.c_str());
  std::exit(2);
}

int positive(const std::string& option, const std::string& text) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v <= 0 || v > 10'000'000)
    usage(fmt::format("{} '{}' is not a positive integer", option, text));
  return static_cast<int>(v);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string opt = argv[i];
    if (opt == "--keep") {
      a.keep = true;
      continue;
    }
    if (opt == "--help" || opt == "-h") usage("help");
    if (i + 1 >= argc) usage(fmt::format("{} needs a value", opt));
    const std::string v = argv[++i];
    if (opt == "--runs") {
      a.runs = positive(opt, v);
    } else if (opt == "--workers") {
      a.workers.clear();
      std::stringstream in(v);
      for (std::string item; std::getline(in, item, ',');) a.workers.push_back(positive(opt, item));
      if (a.workers.empty()) usage("--workers needs a list such as 1,2");
    } else if (opt == "--concurrency") {
      a.concurrency = positive(opt, v);
    } else if (opt == "--batch") {
      a.batch = positive(opt, v);
    } else if (opt == "--samples") {
      a.samples = positive(opt, v);
    } else if (opt == "--timeout") {
      a.timeout_s = positive(opt, v);
    } else if (opt == "--metrics") {
      a.metrics_rounds = positive(opt, v);
    } else if (opt == "--only") {
      if (v != "single" && v != "chain" && v != "latency")
        usage("--only takes single, chain or latency");
      a.only = v;
    } else {
      usage(fmt::format("unknown option '{}'", opt));
    }
  }
  return a;
}

template <class T>
T value_or_throw(Result<T> r, const std::string& what) {
  if (!r) throw std::runtime_error(what + ": " + r.error().format());
  if constexpr (!std::is_void_v<T>) return std::move(*r);
}

double seconds_between(Clock::time_point a, Clock::time_point b) { return Seconds(b - a).count(); }

std::int64_t realtime_us() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000 + ts.tv_nsec / 1'000;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return in ? fmt::format("{} {} {} (1, 5, 15 min)", one, five, fifteen) : "unknown";
}

// "name = value" lines of the cluster's generated settings file, for the record.
std::string durability_settings(const EmbeddedCluster& cluster) {
  auto status = cluster.status();
  if (!status) return "unknown (" + status.error().format() + ")";
  std::ifstream in(status->cluster_dir / "flowreg.conf");
  std::string out;
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("fsync") || line.starts_with("synchronous_commit") ||
        line.starts_with("full_page_writes"))
      out += (out.empty() ? "" : ", ") + line;
  return out.empty() ? "not found in flowreg.conf (server defaults)" : out;
}

std::string shell_quote(const std::string& s) {
  if (s.find_first_not_of(
          "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,@") ==
      std::string::npos)
    return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + shell_quote(a);
  return out;
}

// A child process whose stdout and stderr go to a log file. Killed (SIGKILL) and reaped by the
// destructor if still running: the bench never leaves a worker behind. Movable, not copyable.
class ChildProcess {
 public:
  static ChildProcess spawn(const std::vector<std::string>& argv, const fs::path& log) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0)
      throw std::runtime_error(fmt::format("cannot start {}: {}", argv[0], std::strerror(rc)));
    return ChildProcess(pid, log);
  }

  ChildProcess(ChildProcess&& o) noexcept
      : pid_(std::exchange(o.pid_, 0)), log_(std::move(o.log_)), ended_(std::move(o.ended_)) {}
  ChildProcess& operator=(ChildProcess&&) = delete;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() {
    if (pid_ > 0 && !ended_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }

  pid_t pid() const noexcept { return pid_; }
  const fs::path& log() const noexcept { return log_; }

  // How it ended, once it has; nullopt while it runs.
  const std::optional<std::string>& poll() {
    if (!ended_) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) ended_ = describe(status);
    }
    return ended_;
  }

  // SIGTERM, then waits up to `grace` (SIGKILL after it). How it ended.
  std::string stop(std::chrono::milliseconds grace) {
    if (poll()) return *ended_;
    ::kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + grace;
    while (!poll()) {
      if (Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        ended_ = "did not stop within the grace period; killed (" + describe(status) + ")";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return *ended_;
  }

 private:
  ChildProcess(pid_t pid, fs::path log) : pid_(pid), log_(std::move(log)) {}

  static std::string describe(int status) {
    if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
    if (WIFSIGNALED(status))
      return fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
    return fmt::format("status {}", status);
  }

  pid_t pid_ = 0;
  fs::path log_;
  std::optional<std::string> ended_;
};

// The last lines of a log, for error messages.
std::string tail_of(const fs::path& file, std::size_t lines) {
  std::ifstream in(file);
  std::vector<std::string> all;
  for (std::string line; std::getline(in, line);) all.push_back(line);
  std::string out;
  for (std::size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i)
    out += "    | " + all[i] + "\n";
  return out;
}

struct FlowInfo {
  FlowDef def;
  std::string version;
};

struct Env {
  Args args;
  fs::path scratch;
  ClusterOptions cluster;  // of the bench's cluster; `database` is set per scenario
  std::map<std::string, FlowInfo> flows;
  std::vector<std::string> commands;  // every worker command line run, for the report
};

// The bench_worker plugin's flows, loaded as a worker loads them (same loader, same versions).
std::map<std::string, FlowInfo> load_bench_flows(const fs::path& scratch) {
  FlowRegistry registry;
  PluginLoaderOptions options;
  options.settings.dir = BENCH_WORKER_PLUGIN_DIR;
  options.settings.watch = false;
  options.cache_dir = scratch / "bench-plugin-cache";
  options.inspector = FLOWREG_BINARY;
  std::map<std::string, FlowInfo> out;
  {
    PluginLoader loader(registry, options);
    auto scanned = value_or_throw(loader.scan(), "loading the plugins of " BENCH_WORKER_PLUGIN_DIR);
    for (const auto& p : scanned)
      if (p.error) throw std::runtime_error("plugin " + p.describe_error());
    for (const char* slug : {"bench_single", "bench_chain", "bench_latency"}) {
      FlowRef flow = registry.get(slug);
      if (!flow)
        throw std::runtime_error(fmt::format("flow '{}' not found in {}: is bench_worker built?",
                                             slug, BENCH_WORKER_PLUGIN_DIR));
      out.emplace(slug, FlowInfo{flow->def, flow->version});
    }
  }
  return out;
}

// A fresh, migrated database of the bench's cluster; its connection string.
std::string fresh_database(Env& env, const std::string& name) {
  ClusterOptions options = env.cluster;
  options.database = name;
  auto cluster = value_or_throw(EmbeddedCluster::open(options), "open cluster");
  const std::string conninfo = value_or_throw(cluster.ensure_running(), "create database " + name);
  value_or_throw(migrate(conninfo), "migrate " + name);
  return conninfo;
}

// The workers' configuration for a scenario: the bench plugin's directory only, its database.
fs::path write_config(const Env& env, const std::string& name, const std::string& conninfo) {
  const fs::path file = env.scratch / (name + ".yaml");
  std::ofstream out(file);
  // JSON strings are YAML double-quoted scalars.
  out << "# worker_bench scenario " << name << "\n"
      << "plugins: {dir: " << nlohmann::json(BENCH_WORKER_PLUGIN_DIR).dump() << ", watch: false}\n"
      << "database: {url: " << nlohmann::json(conninfo).dump()
      << ", data_dir: " << nlohmann::json((env.scratch / "worker-data").string()).dump() << "}\n";
  if (!out.flush()) throw std::runtime_error("cannot write " + file.string());
  return file;
}

std::vector<std::string> worker_argv(const Env& env, const fs::path& config) {
  std::vector<std::string> argv = {FLOWREG_BINARY,  "--config",
                                   config.string(), "worker",
                                   "--concurrency", std::to_string(env.args.concurrency),
                                   "--batch",       std::to_string(env.args.batch)};
  if (env.args.metrics_on) argv.insert(argv.end(), {"--metrics", "127.0.0.1:0"});
  return argv;
}

std::vector<ChildProcess> spawn_workers(Env& env, const std::string& name, const fs::path& config,
                                        int count) {
  std::vector<ChildProcess> workers;
  const auto argv = worker_argv(env, config);
  env.commands.push_back(fmt::format("{}  (x{}; output: {}/{}.worker<i>.log)", command_line(argv),
                                     count, env.scratch.string(), name));
  for (int i = 0; i < count; ++i)
    workers.push_back(
        ChildProcess::spawn(argv, env.scratch / fmt::format("{}.worker{}.log", name, i)));
  return workers;
}

// Stops every worker (SIGTERM, all at once, then each is waited for); how each ended.
std::vector<std::string> stop_workers(std::vector<ChildProcess>& workers) {
  for (auto& w : workers)
    if (!w.poll()) ::kill(w.pid(), SIGTERM);
  std::vector<std::string> ends;
  for (auto& w : workers) ends.push_back(w.stop(std::chrono::seconds(40)));
  return ends;
}

std::string describe_workers(std::vector<ChildProcess>& workers) {
  std::string out;
  for (std::size_t i = 0; i < workers.size(); ++i) {
    const auto& end = workers[i].poll();
    out += fmt::format("  worker {} (pid {}): {}; output {}:\n{}", i, workers[i].pid(),
                       end ? *end : std::string("running"), workers[i].log().string(),
                       tail_of(workers[i].log(), 15));
  }
  return out;
}

// Thrown when a scenario does not finish: the bench stops and keeps the scratch directory.
struct ScenarioFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BurnResult {
  std::string flow;
  int steps = 0;
  int workers = 0;
  int runs = 0;
  double enqueue_s = 0;           // start_runs of all the runs
  double first_s = 0;             // spawn -> first completion seen
  double total_s = 0;             // spawn -> last completion seen
  double stop_s = 0;              // SIGTERM -> every worker exited
  std::vector<std::string> ends;  // how each worker ended
};

BurnResult burn_down(Env& env, const std::string& slug, int steps, int worker_count) {
  const Args& a = env.args;
  const FlowInfo& flow = env.flows.at(slug);
  const std::string name = fmt::format("{}_w{}{}", slug, worker_count, env.args.tag);
  BurnResult r{slug, steps, worker_count, a.runs, 0, 0, 0, 0, {}};

  const std::string conninfo = fresh_database(env, "wb_" + name);
  auto store = value_or_throw(RunStore::connect(conninfo), "connect");
  value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert " + slug);
  const auto t_enqueue = Clock::now();
  std::vector<Json> chunk;
  for (int i = 0; i < a.runs; i += kStartChunk) {
    chunk.assign(static_cast<std::size_t>(std::min(kStartChunk, a.runs - i)), Json{{"n", i}});
    value_or_throw(store.start_runs(slug, flow.version, chunk), "start_runs");
  }
  r.enqueue_s = seconds_between(t_enqueue, Clock::now());

  // Opened after the starts (their "started" notifications are not wanted), before the workers.
  auto listener =
      value_or_throw(Listener::connect(conninfo, {std::string(kRunsChannel)}), "listen");
  const fs::path config = write_config(env, name, conninfo);
  std::fprintf(stderr, "  %s: %d runs started in %.2f s; starting %d worker(s)\n", name.c_str(),
               a.runs, r.enqueue_s, worker_count);

  const auto t0 = Clock::now();
  auto workers = spawn_workers(env, name, config, worker_count);
  const auto deadline = t0 + std::chrono::seconds(a.timeout_s);
  long completed = 0, failed = 0;
  Clock::time_point t_first{}, t_last{}, next_check = t0;
  while (completed + failed < a.runs) {
    auto n = value_or_throw(listener.wait(Millis(20)), "waiting for notifications");
    const auto now = Clock::now();
    if (n) {
      const auto space = n->payload.rfind(' ');
      const std::string status = space == std::string::npos ? "" : n->payload.substr(space + 1);
      if (status == "completed" || status == "failed" || status == "cancelled") {
        (status == "completed" ? completed : failed) += 1;
        if (completed + failed == 1) t_first = now;
        t_last = now;
      }
    }
    if (now < next_check) continue;
    next_check = now + Millis(20);
    for (auto& w : workers)
      if (w.poll()) {
        const std::string why = fmt::format(
            "{}: a worker exited before the runs were done ({} of {} runs completed, {} failed, "
            "after {:.1f} s)\n{}",
            name, completed, a.runs, failed, seconds_between(t0, now), describe_workers(workers));
        stop_workers(workers);
        throw ScenarioFailed(why);
      }
    if (now >= deadline) {
      stop_workers(workers);
      throw ScenarioFailed(
          fmt::format("{}: timed out after {} s with {} of {} runs completed ({} failed)\n{}", name,
                      a.timeout_s, completed, a.runs, failed, describe_workers(workers)));
    }
  }
  r.first_s = seconds_between(t0, t_first);
  r.total_s = seconds_between(t0, t_last);

  const auto t_stop = Clock::now();
  r.ends = stop_workers(workers);
  r.stop_s = seconds_between(t_stop, Clock::now());

  // The notifications said so; the table must say so too.
  auto still = value_or_throw(store.list_runs(RunFilter{slug, RunStatus::started, 1}), "list_runs");
  auto done = value_or_throw(store.list_runs(RunFilter{slug, RunStatus::completed, a.runs + 1}),
                             "list_runs");
  if (failed > 0 || !still.empty() || static_cast<int>(done.size()) != a.runs)
    throw ScenarioFailed(fmt::format(
        "{}: {} runs completed and {} failed by notification; the store lists {} completed and {} "
        "still started\n{}",
        name, completed, failed, done.size(), still.empty() ? "none" : "some",
        describe_workers(workers)));
  for (const auto& end : r.ends)
    if (end != "exit code 0")
      throw ScenarioFailed(fmt::format("{}: a worker did not stop cleanly on SIGTERM: {}\n{}", name,
                                       end, describe_workers(workers)));
  return r;
}

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, max = 0, mean = 0;
};

// Nearest-rank percentiles.
Percentiles percentiles(std::vector<double> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  const auto rank = [&](double q) {
    const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
  };
  p.p50 = rank(0.50);
  p.p90 = rank(0.90);
  p.p99 = rank(0.99);
  p.max = v.back();
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / static_cast<double>(v.size());
  return p;
}

struct LatencyResult {
  int samples = 0;
  int warmup = 0;
  Percentiles start_call;     // start_run() round trip
  Percentiles to_handler;     // before start_run -> handler entered (wall clock, ms)
  Percentiles to_completion;  // before start_run -> completion notification received
  double ready_s = 0;         // spawn -> the first run completed
  std::vector<std::string> ends;
};

// Waits for "<run> completed|failed|cancelled" on the listener; the status, or "" on timeout.
std::string wait_run_end(Listener& listener, const RunId& run, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  const std::string prefix = run + " ";
  while (Clock::now() < deadline) {
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    auto n = value_or_throw(listener.wait(std::max(left, Millis(1))), "waiting for notifications");
    if (!n || !n->payload.starts_with(prefix)) continue;
    const std::string status = n->payload.substr(prefix.size());
    if (status != "started") return status;
  }
  return "";
}

LatencyResult latency(Env& env) {
  const Args& a = env.args;
  const std::string slug = "bench_latency";
  const FlowInfo& flow = env.flows.at(slug);
  const std::string name = "bench_latency_w1";
  LatencyResult r;
  r.samples = a.samples;
  r.warmup = 10;

  const std::string conninfo = fresh_database(env, "wb_" + name);
  auto store = value_or_throw(RunStore::connect(conninfo), "connect");
  value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert " + slug);
  auto listener =
      value_or_throw(Listener::connect(conninfo, {std::string(kRunsChannel)}), "listen");
  const fs::path config = write_config(env, name, conninfo);

  const auto t0 = Clock::now();
  auto workers = spawn_workers(env, name, config, 1);
  const auto fail = [&](const std::string& what) {
    const std::string why = fmt::format("{}: {}\n{}", name, what, describe_workers(workers));
    stop_workers(workers);
    throw ScenarioFailed(why);
  };
  std::vector<double> call_ms, handler_ms, done_ms;
  // One run, started when nothing else is in flight; recorded unless a warm-up.
  const auto sample = [&](int i, bool record) {
    while (true) {  // drop what is queued (nothing should be), so the wait sees this run only
      auto n = listener.wait(Millis(0));
      if (!n) fail("listener: " + n.error().format());
      if (!*n) break;
    }
    const auto t_before = Clock::now();
    const std::int64_t before_us = realtime_us();
    auto id = store.start_run(slug, flow.version, Json{{"i", i}});
    const auto t_started = Clock::now();
    if (!id) fail("start_run: " + id.error().format());
    const Millis wait = i == 0 ? Millis(a.timeout_s * 1000) : Millis(10'000);
    const std::string status = wait_run_end(listener, *id, wait);
    const auto t_seen = Clock::now();
    if (status != "completed")
      fail(fmt::format("run {} (sample {}) {} after {} ms", *id, i,
                       status.empty() ? std::string("did not end") : "ended " + status,
                       wait.count()));
    auto info = store.get_run(*id);
    if (!info || !*info || !(*info)->output) fail(fmt::format("run {}: no output", *id));
    const Json& out = *(*info)->output;
    // The run's output is {leaf step slug: its output}.
    const Json* stamp = out.contains("only") ? &out["only"] : &out;
    if (!stamp->is_object() || !stamp->contains("t_us") || !(*stamp)["t_us"].is_number_integer())
      fail(fmt::format("run {}: unexpected output {}", *id, out.dump()));
    if (i == 0) r.ready_s = seconds_between(t0, t_seen);
    if (!record) return;
    const auto handler_us = (*stamp)["t_us"].get<std::int64_t>();
    call_ms.push_back(Seconds(t_started - t_before).count() * 1e3);
    handler_ms.push_back(static_cast<double>(handler_us - before_us) / 1e3);
    done_ms.push_back(Seconds(t_seen - t_before).count() * 1e3);
  };
  // The first run also waits for the worker to be up and serving.
  for (int i = 0; i < r.warmup; ++i) {
    sample(i, false);
    std::this_thread::sleep_for(Millis(5));
  }
  std::fprintf(stderr, "  %s: worker serving after %.2f s; %d samples\n", name.c_str(), r.ready_s,
               a.samples);
  for (int i = 0; i < a.samples; ++i) {
    sample(r.warmup + i, true);
    std::this_thread::sleep_for(Millis(5));
  }
  r.start_call = percentiles(call_ms);
  r.to_handler = percentiles(handler_ms);
  r.to_completion = percentiles(done_ms);
  r.ends = stop_workers(workers);
  for (const auto& end : r.ends)
    if (end != "exit code 0")
      throw ScenarioFailed(fmt::format("{}: the worker did not stop cleanly on SIGTERM: {}\n{}",
                                       name, end, describe_workers(workers)));
  return r;
}

void print_burn_table(const std::vector<BurnResult>& results) {
  if (results.empty()) return;
  std::printf(
      "\nburn-down: N runs started before the workers; time from spawning the workers to the\n"
      "last run's completion, worker start-up included. 'steady' (single-step flows only) leaves\n"
      "out the time to the first completion; a chain's first run completes only near the end,\n"
      "because tasks are claimed in the order they became ready (every run's 'a' before any "
      "'b')\n\n");
  std::printf("%-13s %7s %6s %7s %8s %9s %9s %9s %9s %9s %8s\n", "flow", "workers", "runs", "tasks",
              "enqueue", "1st done", "total", "runs/s", "tasks/s", "steady", "stop");
  std::printf("%-13s %7s %6s %7s %8s %9s %9s %9s %9s %9s %8s\n", "", "", "", "", "runs/s", "s", "s",
              "", "", "runs/s", "s");
  for (const auto& r : results) {
    const double tasks = static_cast<double>(r.runs) * r.steps;
    const double steady_s = r.total_s - r.first_s;
    const std::string steady =
        r.steps == 1 && steady_s > 0 ? fmt::format("{:.0f}", (r.runs - 1) / steady_s) : "-";
    std::printf("%-13s %7d %6d %7.0f %8.0f %9.3f %9.3f %9.0f %9.0f %9s %8.3f\n", r.flow.c_str(),
                r.workers, r.runs, tasks, r.runs / r.enqueue_s, r.first_s, r.total_s,
                r.runs / r.total_s, tasks / r.total_s, steady.c_str(), r.stop_s);
  }
}

void print_latency(const LatencyResult& r) {
  std::printf(
      "\nlatency: 1 idle worker; %d runs of bench_latency started one at a time (after %d "
      "warm-up runs), 5 ms apart; ms\n\n",
      r.samples, r.warmup);
  std::printf("%-44s %8s %8s %8s %8s %8s\n", "", "p50", "p90", "p99", "max", "mean");
  const auto row = [](const char* what, const Percentiles& p) {
    std::printf("%-44s %8.3f %8.3f %8.3f %8.3f %8.3f\n", what, p.p50, p.p90, p.p99, p.max, p.mean);
  };
  row("start_run() call (round trip + commit)", r.start_call);
  row("before start_run -> handler entered", r.to_handler);
  row("before start_run -> completion notified", r.to_completion);
  std::printf("(worker serving %.2f s after it was spawned)\n", r.ready_s);
}

// --metrics R: burn-downs without and with --metrics, alternating; every figure and the ratios.
int metrics_rounds(Env& env) {
  std::vector<std::pair<BurnResult, BurnResult>> rounds;
  try {
    for (int i = 0; i < env.args.metrics_rounds; ++i) {
      std::pair<BurnResult, BurnResult> round;
      for (const bool on : {false, true}) {
        env.args.metrics_on = on;
        env.args.tag = fmt::format("_r{}{}", i, on ? "_metrics" : "");
        (on ? round.second : round.first) =
            burn_down(env, "bench_single", 1, env.args.workers.front());
      }
      rounds.push_back(round);
    }
  } catch (const ScenarioFailed& e) {
    std::printf("\nSCENARIO FAILED: %s\n", e.what());
    return 1;
  }
  std::printf("\nmetrics: burn-down of bench_single, %d worker(s), without and with --metrics\n\n",
              env.args.workers.front());
  std::printf("%5s %8s %12s %12s %12s %12s %9s\n", "round", "runs", "without s", "with s",
              "without r/s", "with r/s", "with/without");
  double sum_ratio = 0;
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    const auto& [off, on] = rounds[i];
    const double ratio = on.total_s / off.total_s;
    sum_ratio += ratio;
    std::printf("%5zu %8d %12.3f %12.3f %12.0f %12.0f %9.3f\n", i + 1, off.runs, off.total_s,
                on.total_s, off.runs / off.total_s, on.runs / on.total_s, ratio);
  }
  std::printf("mean time ratio (with / without): %.3f\n",
              sum_ratio / static_cast<double>(rounds.size()));
  std::printf("\nworker command lines:\n");
  for (const auto& c : env.commands) std::printf("  %s\n", c.c_str());
  return 0;
}

int run_bench(Env& env) {
  if (env.args.metrics_rounds > 0) return metrics_rounds(env);
  const Args& a = env.args;
  std::vector<BurnResult> burns;
  std::optional<LatencyResult> lat;
  const auto report = [&] {
    print_burn_table(burns);
    if (lat) print_latency(*lat);
    std::printf("\nworker command lines:\n");
    for (const auto& c : env.commands) std::printf("  %s\n", c.c_str());
  };
  try {
    for (const auto& [slug, steps, key] :
         {std::tuple{"bench_single", 1, "single"}, std::tuple{"bench_chain", 3, "chain"}}) {
      if (!a.only.empty() && a.only != key) continue;
      for (int w : a.workers) burns.push_back(burn_down(env, slug, steps, w));
    }
    if (a.only.empty() || a.only == "latency") lat = latency(env);
  } catch (const ScenarioFailed& e) {
    report();
    std::printf("\nSCENARIO FAILED: %s\n", e.what());
    return 1;
  }
  report();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Env env;
  env.args = parse_args(argc, argv);
  const Args& a = env.args;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  char tmpl[] = "/tmp/flowreg_worker_bench_XXXXXX";
  if (!mkdtemp(tmpl)) {
    std::perror("mkdtemp");
    return 1;
  }
  env.scratch = tmpl;
  // mkdtemp makes it 0700; when root runs the bench, the cluster's owner (postgres) must enter it.
  fs::permissions(env.scratch, fs::perms::others_exec | fs::perms::group_exec,
                  fs::perm_options::add);

  std::printf(
      "worker_bench: runs %d, workers %s, concurrency %d, batch %d, samples %d%s\n", a.runs,
      [&] {
        std::string s;
        for (int w : a.workers) s += (s.empty() ? "" : ",") + std::to_string(w);
        return s;
      }()
          .c_str(),
      a.concurrency, a.batch, a.samples, a.only.empty() ? "" : (", only " + a.only).c_str());
  std::printf("machine: %u CPUs; load average at start: %s\n", std::thread::hardware_concurrency(),
              load_average().c_str());
  std::printf("scratch: %s\n", env.scratch.c_str());

  int rc = 0;
  std::optional<EmbeddedCluster> cluster;
  try {
    env.cluster.data_dir = env.scratch / "data";
    env.cluster.sync_init = false;  // the cluster is thrown away; the server itself runs durably
    env.cluster.database = "flowreg";
    cluster.emplace(value_or_throw(EmbeddedCluster::open(env.cluster), "open cluster"));
    auto started = value_or_throw(cluster->start(), "start cluster");
    std::printf("PostgreSQL: embedded cluster started in %lld ms; %s\n",
                static_cast<long long>(started.start_time.count()),
                durability_settings(*cluster).c_str());
    env.flows = load_bench_flows(env.scratch);
    for (const auto& [slug, f] : env.flows)
      std::printf("flow %s@%s: %zu step(s)\n", slug.c_str(), f.version.c_str(), f.def.steps.size());
    rc = run_bench(env);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "worker_bench: %s\n", e.what());
    rc = 1;
  }
  if (cluster) {
    if (auto stopped = cluster->stop(); !stopped) {
      std::fprintf(stderr, "worker_bench: stopping the cluster: %s\n",
                   stopped.error().format().c_str());
      rc = 1;
    }
  }
  std::printf("load average at end: %s\n", load_average().c_str());
  if (rc != 0 || a.keep) {
    std::printf("scratch directory kept: %s\n", env.scratch.c_str());
  } else {
    std::error_code ec;
    fs::remove_all(env.scratch, ec);
  }
  return rc;
}
