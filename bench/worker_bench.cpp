// worker_bench: `flowreg worker` processes and the run store against PostgreSQL, end to end, with
// the server's cost of every scenario.
//
//   worker_bench [--only LIST] [--runs N] [--workers LIST] [--batch LIST] [--concurrency C]
//                [--backlog LIST] [--backlog-workers W] [--start-sizes A,B] [--start-samples S]
//                [--start-chunks LIST] [--samples S] [--timeout SECONDS] [--json FILE] [--keep]
//
// One embedded cluster in a scratch directory under /tmp, with the server's default durability
// (fsync and synchronous_commit on, as the embedded cluster configures it), and one fresh
// database per measurement (created and migrated by the project's own code), so that measurements
// do not see each other's rows, dead tuples or workers.
//
// Scenarios (--only takes a comma-separated list; the default runs them all, with the default
// sizes, in a few minutes on 2 cores):
//   single      burn-down of --runs bench_single runs (1 task each), for every --batch (default
//               64,128,256,512) and every --workers count (default 2): runs/s and cost per run per
//               batch size, measured one after another in the same window.
//   chain       the same for bench_chain (a -> b -> c, 3 tasks per run), at the first --batch.
//   fanout      (only when named) the same for bench_fanout (split -> a map step over its 8
//               elements, 9 tasks per run), at the first --batch.
//   backlog     for every --backlog size (default 100000; e.g. 100000,1000000): that many
//               bench_single runs, drained by --backlog-workers (default 2) workers at the first
//               --batch, once as started and once after ANALYZE of every table of schema flowreg;
//               prints the ratio of the two rates.
//   start1      one connection starting runs one at a time (RunStore::start_run), as a long-lived
//               application connection does: 10 warm-up calls on an empty table (plans made
//               small), then --start-samples (default 500) timed calls (every other one with an
//               idempotency key) with the first of
//               --start-sizes (default 1000,100000) runs existing, then the table is filled (by
//               another connection, start_runs) to the second size and the same connection makes
//               the same number of timed calls; p50/p99 call latency at each size and their ratio.
//   startbatch  --runs runs started with RunStore::start_runs in chunks of each --start-chunks
//               (default 10,100,500,1000) runs per call: cost per run.
//   latency     start -> handler: one worker, idle; --samples runs of bench_latency, started one
//               at a time (start_run) with 5 ms pauses. The handler returns the CLOCK_REALTIME
//               time it was entered; the bench subtracts the time taken just before start_run.
//               With them, the floor: a durable one-row INSERT at the same spacing, and
//               fdatasync() back to back and 5 ms apart.
//   metrics     (only when named in --only) --metrics-rounds R (default 3) rounds of two
//               burn-downs of bench_single at the first --batch and --workers: without, then with
//               `--metrics 127.0.0.1:0` (the workers record their metrics; nothing scrapes them);
//               the ratio of the two times per round is the cost the metrics add.
//   scrape      (only when named in --only) for each --scrape-backlog size (default
//               100000,1000000): that many bench_single runs queued (start_runs, no worker),
//               ANALYZE, then what a process's metrics read from the run store
//               (RunStore::scrape_counts): its first read, then --scrape-reads reads (default 5)
//               of the window since the previous one; seconds per read and the cluster's CPU per
//               read. A metrics endpoint reads at most once every 20 times its last read's
//               duration (metrics/store_metrics.hpp): printed as the interval it implies.
//   isolation   (only when named in --only) the cost of `flowreg worker --isolation process`
//               (every handler in a `flowreg __handler-host` process of a pool per plugin, tasks
//               and results over a socketpair) against `--isolation thread`: --isolation-rounds R
//               (default 3) rounds, each of two burn-downs of --runs bench_single runs per batch
//               (64 and 512, or each --batch given), at the first --workers and --concurrency,
//               one with each mode, the mode that goes first alternating from round to round;
//               runs/s of each, process/thread per round and the medians of the rounds. After
//               each burn-down, before the workers stop, the memory of the idle processes:
//               VmRSS of the workers and VmRSS (and Pss, /proc/PID/smaps_rollup, when readable)
//               of every `__handler-host` child of a worker (/proc/*/cmdline, PPid a worker's).
//               Then start -> handler latency as in `latency` (no floor, no unflushed starts):
//               one idle worker per mode, each on a database of its own, --samples runs each,
//               started one at a time 5 ms apart, the modes alternating (ABBA); p50 and p99.
//
// Burn-downs: N runs are started BEFORE any worker runs (RunStore::start_runs, 500 per call), then
// W worker processes start, `flowreg --config CFG worker --concurrency C --batch B`, and the bench
// times the burn-down: from spawning the workers to the last run's completion. Completions are
// counted from the run store's own notifications (channel flowreg_runs, "<run id> completed"),
// received on a Listener opened before the workers start: no polling query competes with the
// workers for the 2 cores. Afterwards list_runs checks that every run completed. Workers are
// stopped with SIGTERM and waited for.
//
// Cost, per run, around every measured phase (a row of the tables):
//   PG CPU us     user + system CPU of the cluster's processes: the postmaster, its live children
//                 (backends, autovacuum, checkpointer, WAL writer...) and its reaped children
//                 (/proc/<pid>/stat utime, stime, cutime, cstime), divided by the runs.
//   WAL B         pg_current_wal_lsn() difference; WAL rec and FPI: pg_stat_wal's wal_records and
//                 wal_fpi differences.
//   heap tup      n_tup_ins + n_tup_upd + n_tup_del of pg_stat_user_tables, summed over schema
//                 flowreg (inserted, updated and deleted heap tuples).
//   idx ent       index entries written, estimated: per table of schema flowreg, (inserts +
//                 updates that were not HOT) times its number of indexes.
//   runs/call     runs divided by the calls of flowreg.work() (a worker's round trip),
//                 flowreg.start_runs() and flowreg._start_copying() (RunStore::start_runs' batch
//                 start by COPY; it calls start_runs instead for a flow it cannot copy, once per
//                 store) in the phase (pg_stat_user_functions; the bench sets track_functions =
//                 'pl' on its databases): how many runs one call carries.
// Statistics counters are flushed by backends when idle or exiting: burn-down phases are measured
// after the workers exited; the start phases close their connection before reading, or make it
// flush them (flush_session_counters).
//
// A scenario that does not finish within --timeout (default 120 s; scaled up for backlogs larger
// than --runs), or whose worker exits early, aborts the bench with the count reached; the workers'
// output (stdout and stderr) is in <scratch>/<scenario>.worker<i>.log, and the scratch directory
// is kept (also with --keep). --json FILE writes every measured row as one JSON document.
//
// The flows come from the bench_worker plugin (bench/plugins/bench_worker.cpp), built alone into
// its own directory: the bench loads it with the project's PluginLoader to store the flow versions
// before starting runs, and the workers load the same directory.

#include <fcntl.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"
#include "metrics/store_metrics.hpp"
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

constexpr int kStartChunk = 500;  // runs per start_runs call of a burn-down's backlog

const std::vector<std::string> kDefaultScenarios = {"single", "chain",      "backlog",
                                                    "start1", "startbatch", "latency"};
const std::vector<std::string> kScenarios = {
    "single",  "chain",      "fanout",    "backlog",    "start1",     "startbatch", "latency",
    "metrics", "scrape",     "isolation", "schedules",  "priorities", "keys",       "rates",
    "waits",   "conditions", "children",  "longreader", "retention",  "soak"};

struct Args {
  std::vector<std::string> only = kDefaultScenarios;
  int runs = 20000;
  std::vector<int> workers{2};
  int concurrency = 8;
  std::vector<int> batches{64, 128, 256, 512};
  bool batches_given = false;  // --batch was given (the isolation scenario's default is 64,512)
  std::vector<int> backlog{100000};
  int backlog_workers = 2;
  std::vector<int> start_sizes{1000, 100000};
  int start_samples = 500;
  std::vector<int> start_chunks{10, 100, 500, 1000};
  int samples = 300;
  int metrics_rounds = 3;
  int isolation_rounds = 3;
  int priority_rounds = 3;     // rounds of the priorities scenario
  int longreader_rounds = 2;   // rounds of the longreader scenario
  int soak_minutes = 10;       // the soak scenario: its length,
  int soak_rate = 2000;        // the runs it starts per second,
  int soak_retention_s = 300;  // the workers' retention (completed, failed, cancelled, events),
  int soak_stable_from = 5;    // and the minute whose sizes the later ones are compared with;
  int soak_hold_from = 0;      // a snapshot held from the end of this minute (0: none)
  int soak_hold_minutes = 0;   // for this many minutes
  long sleepers = 100'000;     // runs asleep of the waits scenario
  long waiters = 100'000;      // runs waiting for a signal beside them
  int schedules = 10000;       // the schedules scenario's schedules, each firing every minute
  int schedule_minutes = 2;    // ... for this many ticks
  int schedule_workers = 3;    // ... fired by this many workers
  std::vector<int> scrape_backlog{100000, 1000000};
  int scrape_reads = 5;
  int timeout_s = 120;
  std::string json_file;
  bool keep = false;

  bool wants(const std::string& scenario) const {
    return std::find(only.begin(), only.end(), scenario) != only.end();
  }
};

constexpr const char* kUsage = R"(usage: worker_bench [options]

Scenarios (--only LIST, comma-separated; default: all of them, a few minutes on 2 cores):
  single       burn-down of --runs single-step runs at every --batch and every --workers count
  chain        burn-down of --runs 3-step chains (a -> b -> c) at the first --batch
  fanout       (only when named) burn-down of --runs runs of split -> map over 8 elements (9
               tasks each) at the first --batch
  backlog      --backlog runs drained as started and after ANALYZE of every flowreg table
  start1       one connection calling start_run() one at a time (every other call with an
               idempotency key), at each of --start-sizes runs
  startbatch   start_runs() in chunks of each of --start-chunks runs per call
  latency      start_run() -> handler entered, one idle worker, --samples runs whose start waits
               for the WAL flush and --samples whose start does not, alternating; and the
               floor in the same window: a durable one-row INSERT after each of the first
               kind, at the same spacing, and the disk's fdatasync() time, back to back and
               5 ms apart
  metrics      (only when named) burn-downs without and with `worker --metrics`, alternating,
               --metrics-rounds times: the cost the metrics add
  scrape       (only when named) the metrics' read of the run store (a first read, then
               --scrape-reads more) with each --scrape-backlog runs queued: seconds and cluster
               CPU per read
  isolation    (only when named) `worker --isolation thread` against `--isolation process`:
               burn-downs of --runs single-step runs at batch 64 and 512 (or each --batch),
               alternating, --isolation-rounds times (runs/s, process/thread, medians); the
               memory and CPU of the workers and their handler processes after each burn-down;
               start -> handler latency (--samples runs per mode, alternating; p50, p99)
  soak         (only when named) --soak-minutes of bench_single runs started at a steady
               --soak-rate per second (at most 500 per start_runs call, on a 100 ms clock), drained
               by --workers workers whose retention keeps --soak-retention seconds of history (a
               round every thirtieth of it); every minute the queued tasks, the runs kept and each
               flowreg table's size (heap, indexes and TOAST); then each table's smallest and
               largest size after --soak-stable-from against its size at that minute (fails
               outside ±20% for a table of 1 MiB or more, or with more than 10 s of starts queued);
               with --soak-hold, a REPEATABLE READ transaction of another connection holds its
               snapshot over some of the minutes (as a pg_dump does). Each minute also prints the
               CPU seconds the cluster and the workers used in it
  retention    (only when named) a burn-down of --runs bench_single runs, aged 2 hours, then one
               round of retention (RunStore::retain, completed: 1h, 1,000 runs per transaction)
               that deletes them all: its time and its cost per run deleted
  longreader   (only when named) --longreader-rounds R (default 2) rounds of two burn-downs of
               --runs bench_single runs at the first --batch and --workers: plain, and with a
               REPEATABLE READ transaction (as a pg_dump holds) opened before the runs start and
               held to the end of the drain, the order alternating; rates, held/plain ratio and
               the dead tuples of tasks and runs left by the held one; then a third burn-down
               with pg_dump running from the workers' start to the drain's end, of another
               database as large (the dumps' CPU) and of the drained one, the order alternating
  priorities   (only when named) --priority-rounds R (default 3) rounds of two burn-downs of
               --runs bench_single runs at the first --batch and --workers: all at priority 0,
               then started with 10 priorities (-5..4, chunk by chunk), alternating; prints
               each round's rates and the mean ratio
  keys         (only when named) --priority-rounds R rounds of three burn-downs of --runs runs
               at the first --batch and --workers, alternating: bench_single; bench_keyed (a
               step limited to 2 tasks at once per key) and bench_keyed_runs (a flow limited to
               2 runs at once per key), their runs spread over 1,000 keys; prints each round's
               rates, the mean ratios to bench_single, and every burn-down's costs
  rates        (only when named) --priority-rounds R rounds of two burn-downs of --runs runs at
               the first --batch and --workers, alternating: bench_single and bench_rated_high (a
               rate limit of 1,000,000 task starts per second, far above the drain); then one
               burn-down of 40,000 runs of bench_rated_1000 (1,000 per second): the completions
               per second from 2 s after the first to 32 s (the bucket's first 1,000 excluded)
  waits        (only when named) --priority-rounds R rounds of two burn-downs of --runs runs of
               bench_single at the first --batch and --workers, alternating which goes first:
               alone, and beside --sleepers N (default 100000) runs of bench_nap asleep (a sleep
               step until 2099, then a no-op step) and --waiters M (default 100000) runs of
               bench_approval waiting for a signal (a wait step, then a no-op step), started
               before the workers; prints each
               round's rates and the mean ratio. Then --sleepers runs of bench_nap whose sleep
               ends at the same time, 30 s after their start began: the seconds from that time
               to the last completion, and runs/s against a burn-down of as many bench_nap runs
               whose sleeps ended before they started (the flow's drain rate)
  conditions   (only when named) --priority-rounds R rounds of three burn-downs of --runs runs
               at the first --batch and --workers: bench_chain (a -> b -> c), bench_cond (b with
               a condition that holds: the same three tasks, without the chain's layout) and
               bench_cond_skip (b's condition false: one task, b and c skipped); prints each
               round's run rates and the mean ratios to bench_chain
  children     (only when named) --priority-rounds R rounds of three burn-downs of --runs runs
               at the first --batch and --workers: bench_single (one task), bench_chain (three
               tasks) and bench_parent (a flow step starting a run of bench_single: two runs, two
               tasks, the child's end handed back); prints each round's run rates (bench_parent's
               counted as its parent runs) and the mean ratios to bench_single
  schedules    (only when named) --schedules S (default 10000) schedules of bench_single, each
               `* * * * *`, fired by --schedule-workers W (default 3) workers for
               --schedule-minutes M (default 2) ticks: runs per tick (each exactly --schedules),
               duplicate keys, and the fire lag (a run's created_at - its tick) p50/p99/max
Every scenario prints runs/s and, per run, PostgreSQL CPU us (the cluster's processes, /proc),
WAL bytes (pg_current_wal_lsn), WAL records and full-page images (pg_stat_wal), heap tuples
written (pg_stat_user_tables n_tup_ins + n_tup_upd + n_tup_del, schema flowreg) and index entries
written (estimated: non-HOT writes times the table's indexes).

Options:
  --only LIST          scenarios to run (default single,chain,backlog,start1,startbatch,latency)
  --runs N             runs per burn-down (single, chain) and per startbatch chunk size (20000)
  --workers LIST       worker processes per single/chain burn-down, e.g. 1,2 (default 2)
  --batch LIST         `flowreg worker --batch` values for single, e.g. 64,512 (default
                       64,128,256,512); chain and backlog use the first
  --concurrency C      `flowreg worker --concurrency` (default 8)
  --backlog LIST       backlog sizes, e.g. 100000,1000000 (default 100000)
  --backlog-workers W  worker processes of the backlog drains (default 2)
  --start-sizes A,B    existing runs at the two start1 measurements (default 1000,100000)
  --start-samples S    timed start_run() calls at each start1 size (default 500)
  --start-chunks LIST  runs per start_runs() call in startbatch (default 10,100,500,1000)
  --samples S          latency samples (default 300)
  --metrics-rounds R   rounds of the metrics scenario (default 3)
  --longreader-rounds R  rounds of the longreader scenario (default 2)
  --soak-minutes M     the soak scenario's length (default 10)
  --soak-rate R        runs it starts per second (default 2000)
  --soak-retention S   its workers' retention in seconds (default 300)
  --soak-stable-from K the minute whose table sizes the later minutes' are compared with
                       (default 5)
  --soak-hold M,N      a snapshot held from the end of minute M for N minutes (default: none)
  --isolation-rounds R rounds of the isolation scenario (default 3)
  --priority-rounds R  rounds of the priorities, keys, rates, waits and conditions scenarios
                       (default 3)
  --sleepers N         runs asleep in the waits scenario (default 100000)
  --waiters N          runs waiting for a signal beside them (default 100000)
  --schedules S        schedules of the schedules scenario (default 10000)
  --schedule-minutes M ticks of the schedules scenario (default 2)
  --schedule-workers W workers of the schedules scenario (default 3)
  --scrape-backlog L   queued runs of the scrape scenario, e.g. 1000000 (default 100000,1000000)
  --scrape-reads N     timed reads after the first at each scrape size (default 5)
  --timeout SECONDS    limit of one burn-down of --runs runs (default 120; larger backlogs get
                       proportionally more)
  --json FILE          also write every measured row to FILE as one JSON document
  --keep               keep the scratch directory (cluster data, worker logs)
  --help               this text

environment: WORKER_BENCH_FLOWREG=PATH runs the workers from another build's flowreg binary (the
database, plugins and measuring stay this build's), to compare two builds in one window
)";

[[noreturn]] void usage(const std::string& why) {
  if (why == "help") {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  std::fprintf(stderr, "worker_bench: %s\n%s", why.c_str(), kUsage);
  std::exit(2);
}

int positive(const std::string& option, const std::string& text) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v <= 0 || v > 10'000'000)
    usage(fmt::format("{} '{}' is not a positive integer", option, text));
  return static_cast<int>(v);
}

std::vector<std::string> split_list(const std::string& option, const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  if (out.empty()) usage(fmt::format("{} needs a comma-separated list", option));
  return out;
}

std::vector<int> positive_list(const std::string& option, const std::string& text) {
  std::vector<int> out;
  for (const auto& item : split_list(option, text)) out.push_back(positive(option, item));
  return out;
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
      a.workers = positive_list(opt, v);
    } else if (opt == "--concurrency") {
      a.concurrency = positive(opt, v);
    } else if (opt == "--batch") {
      a.batches = positive_list(opt, v);
      a.batches_given = true;
    } else if (opt == "--backlog") {
      a.backlog = positive_list(opt, v);
    } else if (opt == "--backlog-workers") {
      a.backlog_workers = positive(opt, v);
    } else if (opt == "--start-sizes") {
      a.start_sizes = positive_list(opt, v);
      if (a.start_sizes.size() != 2 || a.start_sizes[0] >= a.start_sizes[1])
        usage("--start-sizes takes two increasing sizes, such as 1000,100000");
    } else if (opt == "--start-samples") {
      a.start_samples = positive(opt, v);
    } else if (opt == "--start-chunks") {
      a.start_chunks = positive_list(opt, v);
    } else if (opt == "--samples") {
      a.samples = positive(opt, v);
    } else if (opt == "--longreader-rounds") {
      a.longreader_rounds = positive(opt, v);
    } else if (opt == "--soak-minutes") {
      a.soak_minutes = positive(opt, v);
    } else if (opt == "--soak-rate") {
      a.soak_rate = positive(opt, v);
    } else if (opt == "--soak-retention") {
      a.soak_retention_s = positive(opt, v);
    } else if (opt == "--soak-stable-from") {
      a.soak_stable_from = positive(opt, v);
    } else if (opt == "--soak-hold") {
      const auto hold = positive_list(opt, v);
      if (hold.size() != 2) throw std::invalid_argument("--soak-hold wants M,N: " + v);
      a.soak_hold_from = hold[0];
      a.soak_hold_minutes = hold[1];
    } else if (opt == "--metrics-rounds") {
      a.metrics_rounds = positive(opt, v);
    } else if (opt == "--isolation-rounds") {
      a.isolation_rounds = positive(opt, v);
    } else if (opt == "--schedules") {
      a.schedules = positive(opt, v);
    } else if (opt == "--schedule-minutes") {
      a.schedule_minutes = positive(opt, v);
    } else if (opt == "--schedule-workers") {
      a.schedule_workers = positive(opt, v);
    } else if (opt == "--priority-rounds") {
      a.priority_rounds = positive(opt, v);
    } else if (opt == "--sleepers") {
      a.sleepers = positive(opt, v);
    } else if (opt == "--waiters") {
      a.waiters = positive(opt, v);
    } else if (opt == "--scrape-backlog") {
      a.scrape_backlog = positive_list(opt, v);
    } else if (opt == "--scrape-reads") {
      a.scrape_reads = positive(opt, v);
    } else if (opt == "--timeout") {
      a.timeout_s = positive(opt, v);
    } else if (opt == "--json") {
      a.json_file = v;
    } else if (opt == "--only") {
      a.only = split_list(opt, v);
      for (const auto& s : a.only)
        if (std::find(kScenarios.begin(), kScenarios.end(), s) == kScenarios.end())
          usage(fmt::format("--only: unknown scenario '{}'", s));
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
  pid_t postmaster = 0;               // of the bench's cluster, for its CPU
  fs::path psql;                      // the cluster's psql, for the cost counters
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
    for (const char* slug :
         {"bench_single", "bench_chain", "bench_fanout", "bench_latency", "bench_keyed",
          "bench_keyed_runs", "bench_rated_high", "bench_rated_1000", "bench_nap", "bench_approval",
          "bench_cond", "bench_cond_skip", "bench_parent"}) {
      FlowRef flow = registry.get(slug);
      if (!flow)
        throw std::runtime_error(fmt::format("flow '{}' not found in {}: is bench_worker built?",
                                             slug, BENCH_WORKER_PLUGIN_DIR));
      out.emplace(slug, FlowInfo{flow->def, flow->version});
    }
  }
  return out;
}

std::string psql(const Env& env, const std::string& conninfo, const std::string& sql);

// A fresh, migrated database of the bench's cluster; its connection string.
std::string fresh_database(Env& env, const std::string& name) {
  ClusterOptions options = env.cluster;
  options.database = name;
  auto cluster = value_or_throw(EmbeddedCluster::open(options), "open cluster");
  const std::string conninfo = value_or_throw(cluster.ensure_running(), "create database " + name);
  value_or_throw(migrate(conninfo), "migrate " + name);
  // Sessions opened from now on count the calls of PL/pgSQL functions (pg_stat_user_functions):
  // the cost rows' runs per call of work() and start_runs().
  psql(env, conninfo, "ALTER DATABASE \"" + name + "\" SET track_functions = 'pl'");
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

// `extra`: more options of `flowreg worker` (--metrics ..., --isolation ...), after the common
// ones.
std::vector<std::string> worker_argv(const Env& env, const fs::path& config, int batch,
                                     const std::vector<std::string>& extra) {
  // WORKER_BENCH_FLOWREG: another build's flowreg, for workers of a build against another's.
  const char* other = std::getenv("WORKER_BENCH_FLOWREG");
  const std::string binary = other != nullptr && *other != '\0' ? other : FLOWREG_BINARY;
  std::vector<std::string> argv = {binary,          "--config",
                                   config.string(), "worker",
                                   "--concurrency", std::to_string(env.args.concurrency),
                                   "--batch",       std::to_string(batch)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

std::vector<ChildProcess> spawn_workers(Env& env, const std::string& name, const fs::path& config,
                                        int count, int batch,
                                        const std::vector<std::string>& extra = {}) {
  std::vector<ChildProcess> workers;
  const auto argv = worker_argv(env, config, batch, extra);
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

// The median (the mean of the two middle values of an even count); 0 when empty.
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// ---- the server's cost ----------------------------------------------------------------------

// The output of one SQL statement run by the cluster's psql (-X -A -t: unaligned tuples only, "|"
// between fields), trailing newline removed.
std::string psql(const Env& env, const std::string& conninfo, const std::string& sql) {
  const std::string command = command_line({env.psql.string(), "-X", "-A", "-t", "-q", "-v",
                                            "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql}) +
                              " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run psql: " + std::string(std::strerror(errno)));
  std::string out;
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) out.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != 0) throw std::runtime_error(fmt::format("psql failed ({}): {}", sql, out));
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// CPU seconds (user + system) of the postmaster, of its live children and of the children it
// reaped: every process of the cluster, those that ended during the measurement included.
double cluster_cpu_seconds(pid_t postmaster) {
  static const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  // Fields after the ")" that ends the command name: state is field 3, utime 14 ... cstime 17.
  const auto fields = [](const fs::path& stat) {
    std::vector<std::string> out;
    std::string text;
    try {
      std::ifstream in(stat);
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    } catch (const std::ios_base::failure&) {
      // The process exited between the listing and the read (read() gives ESRCH, which
      // libstdc++'s filebuf throws): its time is in its parent's cutime/cstime once reaped.
      return out;
    }
    const auto close = text.rfind(')');
    if (close == std::string::npos) return out;
    std::stringstream rest(text.substr(close + 1));
    for (std::string f; rest >> f;) out.push_back(f);
    return out;  // out[0] is field 3 (state)
  };
  double ticks = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto f = fields(entry.path() / "stat");
    if (f.size() < 15) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    const pid_t ppid = static_cast<pid_t>(std::stol(f[1]));
    if (pid == postmaster) {
      ticks += std::stod(f[11]) + std::stod(f[12]) + std::stod(f[13]) + std::stod(f[14]);
    } else if (ppid == postmaster) {
      ticks += std::stod(f[11]) + std::stod(f[12]);
    }
  }
  return ticks / tick;
}

struct CostSnapshot {
  double cpu_s = 0;
  double wal_lsn = 0, wal_records = 0, wal_fpi = 0;
  double tup_written = 0, idx_entries = 0;
  double calls = 0;  // of flowreg.work(), flowreg.start_runs() and flowreg._start_copying()
};

CostSnapshot snapshot(const Env& env, const std::string& conninfo) {
  CostSnapshot s;
  s.cpu_s = cluster_cpu_seconds(env.postmaster);
  const std::string row =
      psql(env, conninfo,
           "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, w.wal_records, w.wal_fpi, "
           "coalesce(t.tup, 0), coalesce(t.idx, 0), "
           "(SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE schemaname = "
           "'flowreg' AND funcname IN ('work', 'start_runs', '_start_copying')) "
           "FROM pg_stat_wal w, "
           "(SELECT sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del) AS tup, "
           "sum((s.n_tup_ins + s.n_tup_upd - s.n_tup_hot_upd) * "
           "(SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid)) AS idx "
           "FROM pg_stat_user_tables s WHERE s.schemaname = 'flowreg') t");
  std::vector<double> v;
  std::stringstream in(row);
  for (std::string f; std::getline(in, f, '|');) v.push_back(std::stod(f));
  if (v.size() != 6) throw std::runtime_error("unexpected cost counters: " + row);
  s.wal_lsn = v[0];
  s.wal_records = v[1];
  s.wal_fpi = v[2];
  s.tup_written = v[3];
  s.idx_entries = v[4];
  s.calls = v[5];
  return s;
}

// One measured phase: its rate and its cost per run.
struct Row {
  std::string scenario, what;
  long runs = 0;
  double seconds = 0;
  double cpu_us = 0, wal_bytes = 0, wal_records = 0, wal_fpi = 0, tup_written = 0,
         idx_entries = 0;  // per run
  double runs_per_call = 0;
  double rate() const { return seconds > 0 ? static_cast<double>(runs) / seconds : 0; }
};

Row cost_row(std::string scenario, std::string what, long runs, double seconds,
             const CostSnapshot& before, const CostSnapshot& after) {
  const double n = static_cast<double>(std::max(1L, runs));
  Row r{std::move(scenario), std::move(what), runs, seconds};
  r.cpu_us = (after.cpu_s - before.cpu_s) * 1e6 / n;
  r.wal_bytes = (after.wal_lsn - before.wal_lsn) / n;
  r.wal_records = (after.wal_records - before.wal_records) / n;
  r.wal_fpi = (after.wal_fpi - before.wal_fpi) / n;
  r.tup_written = (after.tup_written - before.tup_written) / n;
  r.idx_entries = (after.idx_entries - before.idx_entries) / n;
  r.runs_per_call = n / std::max(1.0, after.calls - before.calls);
  return r;
}

void print_rows_header() {
  std::printf("%-34s %8s %8s %9s %8s %8s %7s %6s %8s %8s %8s\n", "", "runs", "s", "runs/s",
              "PG CPU", "WAL", "WAL", "FPI", "heap", "idx ent", "runs");
  std::printf("%-34s %8s %8s %9s %8s %8s %7s %6s %8s %8s %8s\n", "", "", "", "", "us/run", "B/run",
              "rec/run", "/run", "tup/run", "est/run", "/call");
}

void print_row(const Row& r) {
  std::printf("%-34s %8ld %8.2f %9.0f %8.1f %8.0f %7.2f %6.2f %8.2f %8.2f %8.1f\n", r.what.c_str(),
              r.runs, r.seconds, r.rate(), r.cpu_us, r.wal_bytes, r.wal_records, r.wal_fpi,
              r.tup_written, r.idx_entries, r.runs_per_call);
}

Json row_json(const Row& r) {
  return Json{{"scenario", r.scenario},
              {"what", r.what},
              {"runs", r.runs},
              {"seconds", r.seconds},
              {"runs_per_s", r.rate()},
              {"pg_cpu_us_per_run", r.cpu_us},
              {"wal_bytes_per_run", r.wal_bytes},
              {"wal_records_per_run", r.wal_records},
              {"wal_fpi_per_run", r.wal_fpi},
              {"heap_tuples_per_run", r.tup_written},
              {"index_entries_est_per_run", r.idx_entries},
              {"runs_per_call", r.runs_per_call}};
}

// ANALYZE of every table of schema flowreg.
void analyze_all(const Env& env, const std::string& conninfo) {
  psql(env, conninfo,
       "DO $$DECLARE t record; BEGIN FOR t IN SELECT schemaname, tablename FROM pg_tables WHERE "
       "schemaname = 'flowreg' LOOP EXECUTE format('ANALYZE %I.%I', t.schemaname, t.tablename); "
       "END LOOP; END$$");
}

// Drops the database of a finished scenario (unless --keep), so that the next scenario does not
// share the cluster's memory, disk and checkpoints with its rows.
void drop_database(const Env& env, const std::string& conninfo, const std::string& name) {
  if (env.args.keep) return;
  const std::string maintenance =
      std::regex_replace(conninfo, std::regex("dbname='[^']*'"), "dbname='postgres'");
  // FORCE: this scenario's own store and listener connections are still open.
  psql(env, maintenance, "DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
}

// Starts `runs` runs of `slug` in chunks of `chunk` (start_runs); seconds taken. With `levels`
// (> 0), chunk k is started with priority (k % levels) - levels / 2.
double start_backlog(RunStore& store, const std::string& slug, const std::string& version,
                     long runs, int chunk, int levels = 0, int keys = 0,
                     const std::string& at = {}) {
  const auto t0 = Clock::now();
  std::vector<Json> inputs;
  for (long i = 0; i < runs; i += chunk) {
    // With `at`: the time a sleep step of the flow sleeps until (bench_nap's /at).
    inputs.assign(static_cast<std::size_t>(std::min<long>(chunk, runs - i)),
                  at.empty() ? Json{{"n", i}} : Json{{"n", i}, {"at", at}});
    // With `keys`: run j's input has the key "k": j % keys (a concurrency limit's, bench_keyed).
    if (keys > 0)
      for (std::size_t j = 0; j < inputs.size(); ++j)
        inputs[j]["k"] = (i + static_cast<long>(j)) % keys;
    std::optional<int> priority;
    if (levels > 0) priority = static_cast<int>((i / chunk) % levels) - levels / 2;
    value_or_throw(store.start_runs(slug, version, inputs, std::nullopt, priority), "start_runs");
  }
  return seconds_between(t0, Clock::now());
}

// ---- burn-down --------------------------------------------------------------------------------

struct BurnSpec {
  std::string scenario;
  std::string slug;
  int steps = 1;
  int workers = 1;
  int batch = 64;
  long runs = 0;
  bool analyze = false;
  bool metrics = false;     // workers run with --metrics
  std::string isolation{};  // workers run with --isolation this ("": the option not given)
  bool processes = false;   // read the memory and CPU of the workers and their handler processes
  int round = 0;            // distinguishes repeated burn-downs of the same shape
  int priority_levels = 0;  // > 0: the backlog is started with this many priorities
  int keys = 0;             // > 0: the backlog's inputs spread over this many keys ("k")
  bool times = false;       // keep each completion's time (BurnResult::times)
  long sleepers = 0;        // > 0: this many bench_nap runs asleep until 2099 beside the backlog
  long waiters = 0;         // > 0: this many bench_approval runs waiting for a signal beside it
  int wake_in_s = 0;        // > 0: the backlog's (bench_nap's) sleeps end this long after its start
  bool woke_before = false;    // the backlog's (bench_nap's) sleeps ended before it started
  std::string child{};         // the flow of the runs its flow steps start, stored beside it
  bool hold_snapshot = false;  // a REPEATABLE READ transaction held from before the starts to the
                               // end of the drain (a pg_dump's)
  bool pg_dump = false;        // pg_dump of a database, one after the other, from the workers'
                               // start to the end of the drain: of this burn-down's, or
  std::string dump_other{};    // of this one (a connection string): the dumps' CPU without their
                               // snapshot in the drained database
  bool retain = false;         // after the drain: the runs aged 2 hours, then a round of retention
};

// A burn-down's idle workers and their handler processes, read after the last run completed and
// before the workers were stopped: memory (KiB, medians), and CPU and context switches since they
// started (sums over the processes: what the burn-down cost them, start-up included).
struct IdleProcesses {
  int workers = 0;
  double worker_rss_kb = 0;  // VmRSS of /proc/PID/status
  int hosts = 0;             // `flowreg __handler-host` children of the workers
  double host_rss_kb = 0;
  double host_pss_kb = -1;                  // Pss of /proc/PID/smaps_rollup; < 0 when unreadable
  double worker_cpu_s = 0, host_cpu_s = 0;  // utime + stime of /proc/PID/stat, every thread's
  double worker_switches = 0, host_switches = 0;  // voluntary + involuntary, every thread's
};

// The "Key:   123 kB" value of a /proc file, in KiB; nullopt when the file or key is missing.
std::optional<double> proc_kb(const fs::path& file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);)
    if (line.starts_with(key + ":")) {
      std::stringstream rest(line.substr(key.size() + 1));
      double kb = 0;
      if (rest >> kb) return kb;
    }
  return std::nullopt;
}

// Every process whose parent is one of `parents` and whose command line has the argument
// "__handler-host".
std::vector<pid_t> handler_hosts(const std::vector<pid_t>& parents) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto ppid = proc_kb(entry.path() / "status", "PPid");  // a number, read the same way
    if (!ppid ||
        std::find(parents.begin(), parents.end(), static_cast<pid_t>(*ppid)) == parents.end())
      continue;
    std::ifstream in(entry.path() / "cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::stringstream args(cmdline);
    for (std::string arg; std::getline(args, arg, '\0');)
      if (arg == "__handler-host") {
        out.push_back(static_cast<pid_t>(std::stol(name)));
        break;
      }
  }
  return out;
}

// User + system CPU seconds of a process, all its threads (/proc/PID/stat utime, stime).
double process_cpu_s(pid_t pid) {
  static const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  std::ifstream in(fs::path("/proc") / std::to_string(pid) / "stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::stringstream rest(text.substr(close + 1));
  std::vector<std::string> f;  // f[0] is field 3 (state)
  for (std::string x; rest >> x;) f.push_back(x);
  return f.size() > 12 ? (std::stod(f[11]) + std::stod(f[12])) / tick : 0;
}

// Context switches (voluntary + involuntary) of every thread of a process.
double process_switches(pid_t pid) {
  double n = 0;
  std::error_code ec;
  for (const auto& task :
       fs::directory_iterator(fs::path("/proc") / std::to_string(pid) / "task", ec))
    for (const char* key : {"voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"})
      n += proc_kb(task.path() / "status", key).value_or(0);
  return n;
}

IdleProcesses idle_processes(std::vector<ChildProcess>& workers) {
  IdleProcesses m;
  std::vector<pid_t> pids;
  std::vector<double> worker_rss, host_rss, host_pss;
  for (auto& w : workers) {
    pids.push_back(w.pid());
    if (auto kb = proc_kb(fs::path("/proc") / std::to_string(w.pid()) / "status", "VmRSS"))
      worker_rss.push_back(*kb);
    m.worker_cpu_s += process_cpu_s(w.pid());
    m.worker_switches += process_switches(w.pid());
  }
  bool pss_readable = true;
  for (pid_t host : handler_hosts(pids)) {
    const fs::path dir = fs::path("/proc") / std::to_string(host);
    auto rss = proc_kb(dir / "status", "VmRSS");
    if (!rss) continue;  // it ended between the listing and the read
    host_rss.push_back(*rss);
    m.host_cpu_s += process_cpu_s(host);
    m.host_switches += process_switches(host);
    if (auto pss = proc_kb(dir / "smaps_rollup", "Pss"))
      host_pss.push_back(*pss);
    else
      pss_readable = false;
  }
  m.workers = static_cast<int>(worker_rss.size());
  m.worker_rss_kb = median(worker_rss);
  m.hosts = static_cast<int>(host_rss.size());
  m.host_rss_kb = median(host_rss);
  if (pss_readable && !host_pss.empty()) m.host_pss_kb = median(host_pss);
  return m;
}

struct BurnResult {
  BurnSpec spec;
  double enqueue_s = 0;           // start_runs of all the runs
  double first_s = 0;             // spawn -> first completion seen
  double total_s = 0;             // spawn -> last completion seen
  double stop_s = 0;              // SIGTERM -> every worker exited
  std::vector<std::string> ends;  // how each worker ended
  Row start, drain;               // costs: starting the backlog; spawn -> workers exited
  IdleProcesses processes;        // when spec.processes
  std::vector<double> times;      // when spec.times: each completion, seconds after the spawn
  double wake_s = 0;              // when spec.wake_in_s: the sleeps' end -> last completion
  long dead_tasks = -1, dead_runs = -1;  // when spec.hold_snapshot: n_dead_tup at the drain's end
  int dumps = 0;                         // when spec.pg_dump: the dumps that ended
  std::optional<Row> retained;  // when spec.retain: the round of retention that deleted the runs
};

// An RFC 3339 UTC time, to the millisecond.
std::string rfc3339(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::floor<std::chrono::milliseconds>(t);
  const auto s = std::chrono::floor<std::chrono::seconds>(ms);
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", s, (ms - s).count());
}

// The database the longreader scenario's control dumps (BurnSpec::dump_other): --runs
// bench_single runs queued, as a burn-down's database is when its workers start; made once.
std::string dumpee(Env& env) {
  static std::string conninfo;
  if (conninfo.empty()) {
    const std::string made = fresh_database(env, "wb_longreader_dumpee");
    const FlowInfo& flow = env.flows.at("bench_single");
    auto store = value_or_throw(RunStore::connect(made), "connect");
    value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert bench_single");
    start_backlog(store, "bench_single", flow.version, env.args.runs, kStartChunk);
    psql(env, made, "VACUUM (ANALYZE)");
    conninfo = made;
  }
  return conninfo;
}

BurnResult burn_down(Env& env, const BurnSpec& spec) {
  const Args& a = env.args;
  const FlowInfo& flow = env.flows.at(spec.slug);
  const std::string name =
      fmt::format("{}_w{}_b{}_n{}{}{}{}{}", spec.slug, spec.workers, spec.batch, spec.runs,
                  spec.analyze ? "_analyzed" : "", spec.metrics ? "_metrics" : "",
                  spec.isolation.empty() ? "" : "_" + spec.isolation,
                  spec.round > 0 ? fmt::format("_r{}", spec.round) : "") +
      (spec.priority_levels > 0 ? fmt::format("_p{}", spec.priority_levels) : "") +
      (spec.keys > 0 ? fmt::format("_k{}", spec.keys) : "") +
      (spec.sleepers > 0 ? fmt::format("_s{}", spec.sleepers) : "") +
      (spec.waiters > 0 ? fmt::format("_sig{}", spec.waiters) : "") +
      (spec.wake_in_s > 0 ? fmt::format("_wake{}", spec.wake_in_s) : "") +
      (spec.woke_before ? "_woke" : "") + (spec.hold_snapshot ? "_held" : "") +
      (spec.pg_dump ? (spec.dump_other.empty() ? "_dump" : "_dumpother") : "") +
      (spec.retain ? "_retain" : "");
  BurnResult r;
  r.spec = spec;

  const std::string conninfo = fresh_database(env, "wb_" + name);
  std::optional<pqxx::connection> held_conn;  // spec.hold_snapshot's
  std::optional<pqxx::transaction<pqxx::isolation_level::repeatable_read>> held;
  // bench_nap: the sleeps' end (wake_in_s) as the steady clock will read it.
  Clock::time_point wake_at{};
  {
    auto store = value_or_throw(RunStore::connect(conninfo), "connect");
    if (spec.sleepers > 0) {
      const FlowInfo& nap = env.flows.at("bench_nap");
      value_or_throw(store.upsert_flow(nap.def, nap.version), "upsert bench_nap");
      const double s = start_backlog(store, "bench_nap", nap.version, spec.sleepers, kStartChunk, 0,
                                     0, "2099-01-01T00:00:00Z");
      std::fprintf(stderr, "  %s: %ld runs of bench_nap asleep, started in %.2f s\n", name.c_str(),
                   spec.sleepers, s);
      if (spec.waiters > 0) {
        const FlowInfo& wait = env.flows.at("bench_approval");
        value_or_throw(store.upsert_flow(wait.def, wait.version), "upsert bench_approval");
        const double w =
            start_backlog(store, "bench_approval", wait.version, spec.waiters, kStartChunk);
        std::fprintf(stderr, "  %s: %ld runs of bench_approval waiting, started in %.2f s\n",
                     name.c_str(), spec.waiters, w);
      }
      // What their start leaves to do (autovacuum's vacuum and analyze of the tables they
      // filled, a checkpoint of their WAL) is done now, not during the drain: the drain beside
      // them measures what sleeping runs cost while they sleep.
      psql(env, conninfo, "VACUUM (ANALYZE)");
      psql(env, conninfo, "CHECKPOINT");
    }
    value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert " + spec.slug);
    if (!spec.child.empty()) {
      const FlowInfo& child = env.flows.at(spec.child);
      value_or_throw(store.upsert_flow(child.def, child.version), "upsert " + spec.child);
    }
    if (spec.hold_snapshot) {
      // A snapshot taken now and held: the rows the drain deletes stay for VACUUM, as behind a
      // pg_dump started before the runs.
      held_conn.emplace(conninfo);
      held.emplace(*held_conn, "held");
      held->exec("SELECT count(*) FROM flowreg.runs");
    }
    const auto before = snapshot(env, conninfo);
    std::string at;
    if (spec.wake_in_s > 0) {
      wake_at = Clock::now() + std::chrono::seconds(spec.wake_in_s);
      at = rfc3339(std::chrono::system_clock::now() + std::chrono::seconds(spec.wake_in_s));
    }
    if (spec.woke_before) at = "2000-01-01T00:00:00Z";
    r.enqueue_s = start_backlog(store, spec.slug, flow.version, spec.runs, kStartChunk,
                                spec.priority_levels, spec.keys, at);
    if (spec.wake_in_s > 0 && Clock::now() >= wake_at)
      throw ScenarioFailed(
          fmt::format("{}: starting the runs took {:.1f} s, past their sleeps' "
                      "end ({} s): use fewer --sleepers",
                      name, r.enqueue_s, spec.wake_in_s));
    store = value_or_throw(RunStore::connect(conninfo), "connect");  // flushes the counters
    const auto after = snapshot(env, conninfo);
    r.start = cost_row(spec.scenario, fmt::format("start_runs x{}", kStartChunk), spec.runs,
                       r.enqueue_s, before, after);
  }
  if (spec.analyze) analyze_all(env, conninfo);

  auto store = value_or_throw(RunStore::connect(conninfo), "connect");
  // Opened after the starts (their "started" notifications are not wanted), before the workers.
  auto listener =
      value_or_throw(Listener::connect(conninfo, {std::string(kRunsChannel)}), "listen");
  const fs::path config = write_config(env, name, conninfo);
  std::fprintf(stderr, "  %s: %ld runs started in %.2f s; starting %d worker(s)\n", name.c_str(),
               spec.runs, r.enqueue_s, spec.workers);

  const auto cost_before = snapshot(env, conninfo);
  const auto t0 = Clock::now();
  std::vector<std::string> extra;
  if (spec.metrics) extra.insert(extra.end(), {"--metrics", "127.0.0.1:0"});
  if (!spec.isolation.empty()) extra.insert(extra.end(), {"--isolation", spec.isolation});
  auto workers = spawn_workers(env, name, config, spec.workers, spec.batch, extra);
  // spec.pg_dump: dumps of the database (its output thrown away), one after the other until the
  // drain ends; each holds its snapshot for its whole run, as a nightly backup does.
  std::atomic<bool> dumping{spec.pg_dump};
  std::atomic<int> dumps{0};
  std::thread dumper;
  if (spec.pg_dump)
    dumper = std::thread([&] {
      const std::string command =
          command_line({(env.psql.parent_path() / "pg_dump").string(), "-d",
                        spec.dump_other.empty() ? conninfo : spec.dump_other, "-f", "/dev/null"}) +
          " >/dev/null 2>&1";
      while (dumping.load()) {
        if (std::system(command.c_str()) != 0) return;
        dumps.fetch_add(1);
      }
    });
  struct JoinDumper {  // on every way out, a failed drain's too
    std::atomic<bool>& dumping;
    std::thread& dumper;
    ~JoinDumper() {
      dumping = false;
      if (dumper.joinable()) dumper.join();
    }
  } join_dumper{dumping, dumper};
  const long scale = std::max(1L, spec.runs / std::max(1, a.runs));
  const auto deadline = t0 + std::chrono::seconds(a.timeout_s * scale);
  long completed = 0, failed = 0;
  // Every run ends once, and so does each child run of a flow step (one per run, spec.child).
  const long ends = spec.child.empty() ? spec.runs : 2 * spec.runs;
  Clock::time_point t_first{}, t_last{}, next_check = t0;
  while (completed + failed < ends) {
    auto n = value_or_throw(listener.wait(Millis(20)), "waiting for notifications");
    const auto now = Clock::now();
    if (n) {
      const auto space = n->payload.rfind(' ');
      const std::string status = space == std::string::npos ? "" : n->payload.substr(space + 1);
      if (status == "completed" || status == "failed" || status == "cancelled") {
        (status == "completed" ? completed : failed) += 1;
        if (spec.times) r.times.push_back(seconds_between(t0, now));
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
            name, completed, spec.runs, failed, seconds_between(t0, now),
            describe_workers(workers));
        stop_workers(workers);
        throw ScenarioFailed(why);
      }
    if (now >= deadline) {
      stop_workers(workers);
      throw ScenarioFailed(fmt::format(
          "{}: timed out after {} s with {} of {} runs completed ({} failed)\n{}", name,
          a.timeout_s * scale, completed, spec.runs, failed, describe_workers(workers)));
    }
  }
  r.first_s = seconds_between(t0, t_first);
  r.total_s = seconds_between(t0, t_last);
  if (dumper.joinable()) {
    dumping = false;
    dumper.join();
    r.dumps = dumps.load();
    if (r.dumps == 0) throw ScenarioFailed(name + ": no pg_dump of the database ended");
  }
  if (spec.wake_in_s > 0) r.wake_s = seconds_between(wake_at, t_last);
  if (spec.processes) r.processes = idle_processes(workers);

  if (held) {
    pqxx::connection c(conninfo);
    pqxx::nontransaction tx(c);
    tx.exec("SELECT pg_stat_force_next_flush()");
    const auto dead = tx.exec(
        "SELECT coalesce(sum(n_dead_tup) FILTER (WHERE relname = 'tasks'), 0), "
        "coalesce(sum(n_dead_tup) FILTER (WHERE relname = 'runs'), 0) FROM pg_stat_user_tables "
        "WHERE schemaname = 'flowreg'");
    r.dead_tasks = dead[0][0].as<long>();
    r.dead_runs = dead[0][1].as<long>();
    held->abort();
    held.reset();
  }
  const auto t_stop = Clock::now();
  r.ends = stop_workers(workers);
  r.stop_s = seconds_between(t_stop, Clock::now());
  const auto cost_after = snapshot(env, conninfo);
  r.drain = cost_row(spec.scenario, "drain", spec.runs, r.total_s, cost_before, cost_after);

  // The notifications said so; the table must say so too (counted when small enough to list).
  auto still =
      value_or_throw(store.list_runs(RunFilter{spec.slug, RunStatus::started, 1}), "list_runs");
  long listed = completed;
  if (spec.runs <= 200'000)
    listed = static_cast<long>(
        value_or_throw(store.list_runs(RunFilter{spec.slug, RunStatus::completed,
                                                 static_cast<int>(spec.runs + 1)}),
                       "list_runs")
            .size());
  if (failed > 0 || !still.empty() || listed != spec.runs)
    throw ScenarioFailed(fmt::format(
        "{}: {} runs completed and {} failed by notification; the store lists {} completed and {} "
        "still started\n{}",
        name, completed, failed, listed, still.empty() ? "none" : "some",
        describe_workers(workers)));
  for (const auto& end : r.ends)
    if (end != "exit code 0")
      throw ScenarioFailed(fmt::format("{}: a worker did not stop cleanly on SIGTERM: {}\n{}", name,
                                       end, describe_workers(workers)));
  if (spec.retain) {
    // Every run ended two hours ago (and vacuumed after the update that says so), then one round
    // of retention with completed runs kept one hour: it deletes them all, 1,000 per transaction.
    psql(env, conninfo,
         "UPDATE flowreg.runs SET created_at = created_at - interval '2 hours', "
         "finished_at = finished_at - interval '2 hours'");
    psql(env, conninfo, "VACUUM (ANALYZE)");
    psql(env, conninfo, "CHECKPOINT");
    flowreg::RetentionSettings hour;
    hour.runs = {Millis(3'600'000), Millis(3'600'000), Millis(3'600'000)};
    auto retainer = value_or_throw(RunStore::connect(conninfo), "connect");
    const auto before = snapshot(env, conninfo);
    const auto t = Clock::now();
    const auto round = value_or_throw(retainer.retain(hour, "bench"), "retain");
    const double took = seconds_between(t, Clock::now());
    retainer = value_or_throw(RunStore::connect(conninfo), "connect");  // flushes the counters
    const auto after = snapshot(env, conninfo);
    if (round.runs != spec.runs)
      throw ScenarioFailed(
          fmt::format("{}: retention deleted {} runs of {}", name, round.runs, spec.runs));
    r.retained = cost_row(spec.scenario, "retain x1000", spec.runs, took, before, after);
  }
  drop_database(env, conninfo, "wb_" + name);
  return r;
}

struct LatencyResult {
  int samples = 0;
  int warmup = 0;
  Percentiles start_call;     // start_run() round trip
  Percentiles to_handler;     // before start_run -> handler entered (wall clock, ms)
  Percentiles to_completion;  // before start_run -> completion notification received
  // The same, started by a connection with synchronous_commit off (its commit does not wait for
  // the WAL flush; the worker's stay durable), in alternation with the samples above: what the
  // call and the path to the handler cost without the disk's flush.
  Percentiles start_call_async, to_handler_async, to_completion_async;
  // The floor under the figures above, measured in the same window: a one-row INSERT into a table
  // of its own with no index but its key and no notification, committed durably (synchronous
  // commit on) by a connection of its own, after each sample whose commit waits for the flush
  // and 5 ms apart from it and from the next, as the samples are from each other; and the disk's
  // fdatasync() of an 8 kB write, back to back and 5 ms after the last (the pause every sample's
  // commit follows).
  Percentiles floor_insert;
  Percentiles flush_ms, flush_idle_ms;
  double ready_s = 0;  // spawn -> the first run completed
  std::vector<std::string> ends;
};

// Milliseconds each of `n` fdatasync() calls takes after an 8 kB write to a file in `dir`: the
// floor under any commit that waits for its WAL flush on that disk. `idle`: the pause before each
// write (a disk, or a virtual one, may take longer to flush after a pause than back to back).
std::vector<double> disk_flush_ms(const fs::path& dir, int n, Millis idle = Millis(0)) {
  const fs::path file = dir / "flush-probe";
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) throw ScenarioFailed("cannot create " + file.string());
  std::vector<double> out;
  const std::string page(8192, 'x');
  for (int i = 0; i < n; ++i) {
    if (idle.count() > 0) std::this_thread::sleep_for(idle);
    if (::pwrite(fd, page.data(), page.size(), 0) != static_cast<ssize_t>(page.size())) break;
    const auto t = Clock::now();
    if (::fdatasync(fd) != 0) break;
    out.push_back(Seconds(Clock::now() - t).count() * 1e3);
  }
  ::close(fd);
  fs::remove(file);
  if (out.size() != static_cast<std::size_t>(n)) throw ScenarioFailed("fdatasync failed");
  return out;
}

// Waits for "<run> completed|failed|cancelled" on the listener; the status, or "" on timeout.
// `gone` is asked every 100 ms: true gives up at once (the workers that would end the run exited).
std::string wait_run_end(Listener& listener, const RunId& run, Millis timeout,
                         const std::function<bool()>& gone) {
  const auto deadline = Clock::now() + timeout;
  const std::string prefix = run + " ";
  while (Clock::now() < deadline) {
    if (gone()) return "";
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    auto n = value_or_throw(listener.wait(std::clamp(left, Millis(1), Millis(100))),
                            "waiting for notifications");
    if (!n || !n->payload.starts_with(prefix)) continue;
    const std::string status = n->payload.substr(prefix.size());
    if (status != "started") return status;
  }
  return "";
}

// What went wrong in one latency sample; the caller adds its workers' logs.
struct SampleFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One run of bench_latency, started by `starter` when nothing else is in flight and waited for
// on `listener` (of the same database); its output read by `reader`.
struct LatencySample {
  double call_ms = 0;     // start_run() round trip
  double handler_ms = 0;  // before start_run -> handler entered (wall clock)
  double done_ms = 0;     // before start_run -> completion notification received
  Clock::time_point seen;
};

LatencySample latency_sample(RunStore& starter, RunStore& reader, Listener& listener,
                             const FlowInfo& flow, int i, Millis wait,
                             const std::function<bool()>& worker_exited) {
  const std::string slug = flow.def.slug;
  while (true) {  // drop what is queued (nothing should be), so the wait sees this run only
    auto n = listener.wait(Millis(0));
    if (!n) throw SampleFailed("listener: " + n.error().format());
    if (!*n) break;
  }
  const auto t_before = Clock::now();
  const std::int64_t before_us = realtime_us();
  auto id = starter.start_run(slug, flow.version, Json{{"i", i}});
  const auto t_started = Clock::now();
  if (!id) throw SampleFailed("start_run: " + id.error().format());
  const std::string status = wait_run_end(listener, *id, wait, worker_exited);
  const auto t_seen = Clock::now();
  if (status.empty() && worker_exited())
    throw SampleFailed(
        fmt::format("run {} (sample {}): the worker exited before the run ended", *id, i));
  if (status != "completed")
    throw SampleFailed(fmt::format("run {} (sample {}) {} after {} ms", *id, i,
                                   status.empty() ? std::string("did not end") : "ended " + status,
                                   wait.count()));
  auto info = reader.get_run(*id);
  if (!info || !*info || !(*info)->output)
    throw SampleFailed(fmt::format("run {}: no output", *id));
  const Json& out = *(*info)->output;
  // The run's output is {leaf step slug: its output}.
  const Json* stamp = out.contains("only") ? &out["only"] : &out;
  if (!stamp->is_object() || !stamp->contains("t_us") || !(*stamp)["t_us"].is_number_integer())
    throw SampleFailed(fmt::format("run {}: unexpected output {}", *id, out.dump()));
  const auto handler_us = (*stamp)["t_us"].get<std::int64_t>();
  return {Seconds(t_started - t_before).count() * 1e3,
          static_cast<double>(handler_us - before_us) / 1e3,
          Seconds(t_seen - t_before).count() * 1e3, t_seen};
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
  auto store_async = value_or_throw(
      RunStore::connect(conninfo + " options='-c synchronous_commit=off'"), "connect (async)");
  value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert " + slug);
  auto listener =
      value_or_throw(Listener::connect(conninfo, {std::string(kRunsChannel)}), "listen");
  const fs::path config = write_config(env, name, conninfo);
  // The floor's table and connection (see LatencyResult::floor_insert).
  pqxx::connection floor_conn(conninfo);
  pqxx::nontransaction(floor_conn)
      .exec0("CREATE TABLE public.latency_floor (id bigserial PRIMARY KEY, input jsonb NOT NULL)");
  floor_conn.prepare("floor", "INSERT INTO public.latency_floor (input) VALUES ($1::jsonb)");

  const auto t0 = Clock::now();
  auto workers = spawn_workers(env, name, config, 1, a.batches.front());
  const auto fail = [&](const std::string& what) {
    const std::string why = fmt::format("{}: {}\n{}", name, what, describe_workers(workers));
    stop_workers(workers);
    throw ScenarioFailed(why);
  };
  const std::function<bool()> worker_exited = [&] { return workers.front().poll().has_value(); };
  std::vector<double> call_ms, handler_ms, done_ms;
  std::vector<double> call_async_ms, handler_async_ms, done_async_ms, floor_ms;
  const auto floor_sample = [&](int i) {
    const std::string input = Json{{"i", i}}.dump();
    const auto t = Clock::now();
    try {
      pqxx::nontransaction(floor_conn).exec_prepared0("floor", input);
    } catch (const std::exception& e) {
      fail(std::string("the floor's INSERT: ") + e.what());
    }
    floor_ms.push_back(Seconds(Clock::now() - t).count() * 1e3);
  };
  // One run, started when nothing else is in flight; recorded unless a warm-up. Odd samples are
  // started without waiting for the WAL flush.
  const auto sample = [&](int i, bool record) {
    const bool async = i % 2 == 1;
    const Millis wait = i == 0 ? Millis(a.timeout_s * 1000) : Millis(10'000);
    LatencySample s;
    try {
      s = latency_sample(async ? store_async : store, store, listener, flow, i, wait,
                         worker_exited);
    } catch (const SampleFailed& e) {
      fail(e.what());
    }
    if (i == 0) r.ready_s = seconds_between(t0, s.seen);
    if (!record) return;
    (async ? call_async_ms : call_ms).push_back(s.call_ms);
    (async ? handler_async_ms : handler_ms).push_back(s.handler_ms);
    (async ? done_async_ms : done_ms).push_back(s.done_ms);
  };
  // The first run also waits for the worker to be up and serving.
  for (int i = 0; i < r.warmup; ++i) {
    sample(i, false);
    std::this_thread::sleep_for(Millis(5));
  }
  std::fprintf(stderr, "  %s: worker serving after %.2f s; %d samples\n", name.c_str(), r.ready_s,
               a.samples);
  for (int i = 0; i < 2 * a.samples; ++i) {
    sample(r.warmup + i, true);
    std::this_thread::sleep_for(Millis(5));
    // After a sample whose commit waits for the flush, so that those samples keep their pause
    // after a run's whole round (the bar's figure, comparable across versions of this bench).
    if ((r.warmup + i) % 2 == 0) {
      floor_sample(i);
      std::this_thread::sleep_for(Millis(5));
    }
  }
  r.start_call = percentiles(call_ms);
  r.to_handler = percentiles(handler_ms);
  r.to_completion = percentiles(done_ms);
  r.start_call_async = percentiles(call_async_ms);
  r.to_handler_async = percentiles(handler_async_ms);
  r.to_completion_async = percentiles(done_async_ms);
  r.floor_insert = percentiles(floor_ms);
  r.flush_ms = percentiles(disk_flush_ms(env.scratch, 200));
  r.flush_idle_ms = percentiles(disk_flush_ms(env.scratch, 200, Millis(5)));
  r.ends = stop_workers(workers);
  for (const auto& end : r.ends)
    if (end != "exit code 0")
      throw ScenarioFailed(fmt::format("{}: the worker did not stop cleanly on SIGTERM: {}\n{}",
                                       name, end, describe_workers(workers)));
  return r;
}

void print_latency(const LatencyResult& r) {
  std::printf(
      "\nlatency: 1 idle worker; 2 x %d runs of bench_latency started one at a time (after %d "
      "warm-up runs), 5 ms apart, alternately by a connection whose commit waits for the WAL "
      "flush (synchronous_commit on, as flowreg's) and by one whose commit does not (off); the "
      "floor: %d durable one-row INSERTs into a table of the bench's, each 5 ms after a run of the "
      "first kind and 5 ms before the next run; ms\n\n",
      r.samples, r.warmup, r.samples);
  std::printf("%-44s %8s %8s %8s %8s %8s\n", "", "p50", "p90", "p99", "max", "mean");
  const auto row = [](const char* what, const Percentiles& p) {
    std::printf("%-44s %8.3f %8.3f %8.3f %8.3f %8.3f\n", what, p.p50, p.p90, p.p99, p.max, p.mean);
  };
  row("start_run() call (round trip + commit)", r.start_call);
  row("before start_run -> handler entered", r.to_handler);
  row("before start_run -> completion notified", r.to_completion);
  row("start_run() call, commit not flushed", r.start_call_async);
  row("  -> handler entered", r.to_handler_async);
  row("  -> completion notified", r.to_completion_async);
  row("floor: durable one-row INSERT, same spacing", r.floor_insert);
  row("the disk: fdatasync() of an 8 kB write", r.flush_ms);
  row("  the same, 5 ms after the last", r.flush_idle_ms);
  std::printf("(worker serving %.2f s after it was spawned)\n", r.ready_s);
}

// ---- isolation: thread vs process ---------------------------------------------------------------

const char* const kIsolations[2] = {"thread", "process"};

// Start -> handler under each isolation: one idle worker per mode, each on a database of its own
// (so that a run reaches the worker of its mode only), both running throughout; runs started one
// at a time, 5 ms apart, the modes alternating thread, process, process, thread, ...
struct IsolationLatency {
  int samples = 0;  // per mode
  int warmup = 0;   // per mode
  Percentiles call[2], to_handler[2], to_completion[2];
  double ready_s[2] = {0, 0};  // spawn -> its first run completed
};

IsolationLatency isolation_latency(Env& env) {
  const Args& a = env.args;
  const FlowInfo& flow = env.flows.at("bench_latency");
  IsolationLatency r;
  r.samples = a.samples;
  r.warmup = 10;
  struct Side {
    std::string name;
    std::optional<RunStore> store;
    std::optional<Listener> listener;
    std::vector<ChildProcess> workers;
    std::vector<double> call, handler, done;
    Clock::time_point t0;
  };
  Side sides[2];
  for (int m = 0; m < 2; ++m) {
    Side& side = sides[m];
    side.name = fmt::format("bench_latency_w1_{}", kIsolations[m]);
    const std::string conninfo = fresh_database(env, "wb_" + side.name);
    side.store.emplace(value_or_throw(RunStore::connect(conninfo), "connect"));
    value_or_throw(side.store->upsert_flow(flow.def, flow.version), "upsert bench_latency");
    side.listener.emplace(
        value_or_throw(Listener::connect(conninfo, {std::string(kRunsChannel)}), "listen"));
    const fs::path config = write_config(env, side.name, conninfo);
    side.t0 = Clock::now();
    side.workers = spawn_workers(env, side.name, config, 1, a.batches.front(),
                                 {"--isolation", kIsolations[m]});
  }
  const auto stop_all = [&] {
    for (auto& side : sides) stop_workers(side.workers);
  };
  const auto fail = [&](int m, const std::string& what) {
    const std::string why =
        fmt::format("{}: {}\n{}", sides[m].name, what, describe_workers(sides[m].workers));
    stop_all();
    throw ScenarioFailed(why);
  };
  const auto sample = [&](int i, bool record) {
    const int m = (i / 2) % 2 == 0 ? i % 2 : 1 - i % 2;  // thread, process, process, thread
    Side& side = sides[m];
    const std::function<bool()> worker_exited = [&] {
      return side.workers.front().poll().has_value();
    };
    const Millis wait = i < 2 ? Millis(a.timeout_s * 1000) : Millis(10'000);
    LatencySample s;
    try {
      s = latency_sample(*side.store, *side.store, *side.listener, flow, i, wait, worker_exited);
    } catch (const SampleFailed& e) {
      fail(m, e.what());
    }
    if (i < 2) r.ready_s[m] = seconds_between(side.t0, s.seen);
    if (!record) return;
    side.call.push_back(s.call_ms);
    side.handler.push_back(s.handler_ms);
    side.done.push_back(s.done_ms);
  };
  // The first run of each mode also waits for its worker to be up and serving.
  for (int i = 0; i < 2 * r.warmup; ++i) {
    sample(i, false);
    std::this_thread::sleep_for(Millis(5));
  }
  std::fprintf(stderr,
               "  isolation latency: workers serving after %.2f s (thread), %.2f s (process); "
               "%d samples each\n",
               r.ready_s[0], r.ready_s[1], a.samples);
  for (int i = 0; i < 2 * a.samples; ++i) {
    sample(2 * r.warmup + i, true);
    std::this_thread::sleep_for(Millis(5));
  }
  for (int m = 0; m < 2; ++m) {
    r.call[m] = percentiles(sides[m].call);
    r.to_handler[m] = percentiles(sides[m].handler);
    r.to_completion[m] = percentiles(sides[m].done);
  }
  for (int m = 0; m < 2; ++m) {
    for (const auto& end : stop_workers(sides[m].workers))
      if (end != "exit code 0") {
        const std::string why =
            fmt::format("{}: the worker did not stop cleanly on SIGTERM: {}\n{}", sides[m].name,
                        end, describe_workers(sides[m].workers));
        stop_all();
        throw ScenarioFailed(why);
      }
  }
  return r;
}

// One round's burn-downs at one batch size, one per mode.
struct IsolationPair {
  int round = 0;
  int batch = 0;
  const char* first = "";  // the mode that ran first
  BurnResult of[2];        // thread, process
  double rate(int m) const { return static_cast<double>(of[m].spec.runs) / of[m].total_s; }
  double ratio() const { return rate(1) / rate(0); }
};

void print_isolation(const Args& a, const std::vector<IsolationPair>& pairs,
                     const std::optional<IsolationLatency>& lat) {
  if (pairs.empty() && !lat) return;
  constexpr double kRateTarget = 0.8, kLatencyTargetMs = 0.2;  // issue 49's
  const auto mib = [](double kb) { return kb / 1024; };
  if (!pairs.empty()) {
    const auto& s0 = pairs.front().of[0].spec;
    std::printf(
        "\nisolation: burn-downs of %ld bench_single runs (a no-op handler), %d worker(s), "
        "concurrency %d, `worker --isolation thread` and `--isolation process`, the first "
        "alternating from round to round; time from spawning the workers to the last "
        "completion\n",
        s0.runs, s0.workers, a.concurrency);
    std::printf("%5s %6s %8s %12s %12s %15s\n", "round", "batch", "first", "thread r/s",
                "process r/s", "process/thread");
    for (const auto& p : pairs)
      std::printf("%5d %6d %8s %12.0f %12.0f %15.3f\n", p.round, p.batch, p.first, p.rate(0),
                  p.rate(1), p.ratio());
    std::printf("medians of the rounds (target: process/thread >= %.2f):\n", kRateTarget);
    std::printf("%5s %6s %8s %12s %12s %15s\n", "", "batch", "rounds", "thread r/s", "process r/s",
                "process/thread");
    std::vector<int> batches;
    for (const auto& p : pairs)
      if (std::find(batches.begin(), batches.end(), p.batch) == batches.end())
        batches.push_back(p.batch);
    for (int batch : batches) {
      std::vector<double> t, pr, ratio;
      for (const auto& p : pairs)
        if (p.batch == batch) {
          t.push_back(p.rate(0));
          pr.push_back(p.rate(1));
          ratio.push_back(p.ratio());
        }
      const double m = median(ratio);
      const std::string verdict = m >= kRateTarget
                                      ? std::string("target met")
                                      : fmt::format("target missed by {:.3f}", kRateTarget - m);
      std::printf("%5s %6d %8zu %12.0f %12.0f %15.3f  %s\n", "", batch, ratio.size(), median(t),
                  median(pr), m, verdict.c_str());
    }
    std::printf(
        "\nidle memory after each burn-down, before the workers stopped: the workers' VmRSS, and "
        "their `flowreg __handler-host` children's VmRSS and Pss (smaps_rollup); medians, MiB\n");
    std::printf("%5s %6s %8s %8s %12s %8s %12s %12s\n", "round", "batch", "mode", "workers",
                "worker RSS", "hosts", "host RSS", "host Pss");
    std::vector<double> host_rss, host_pss, worker_rss[2];
    std::vector<int> host_counts;
    for (const auto& p : pairs)
      for (int m = 0; m < 2; ++m) {
        const IdleProcesses& mem = p.of[m].processes;
        worker_rss[m].push_back(mem.worker_rss_kb);
        if (m == 1) {
          host_rss.push_back(mem.host_rss_kb);
          if (mem.host_pss_kb >= 0) host_pss.push_back(mem.host_pss_kb);
          host_counts.push_back(mem.hosts);
        }
        const std::string rss =
            mem.hosts > 0 ? fmt::format("{:.1f}", mib(mem.host_rss_kb)) : std::string("-");
        const std::string pss =
            mem.host_pss_kb >= 0 ? fmt::format("{:.1f}", mib(mem.host_pss_kb)) : std::string("-");
        std::printf("%5d %6d %8s %8d %12.1f %8d %12s %12s\n", p.round, p.batch, kIsolations[m],
                    mem.workers, mib(mem.worker_rss_kb), mem.hosts, rss.c_str(), pss.c_str());
      }
    std::vector<double> counts(host_counts.begin(), host_counts.end());
    const std::string pss =
        host_pss.empty() ? std::string("unreadable") : fmt::format("{:.1f}", mib(median(host_pss)));
    std::printf(
        "median over the burn-downs: worker RSS %.1f MiB (thread), %.1f MiB (process); %.0f "
        "handler processes, each %.1f MiB RSS, %s MiB Pss\n",
        mib(median(worker_rss[0])), mib(median(worker_rss[1])), median(counts),
        mib(median(host_rss)), pss.c_str());

    // Where the time goes: the CPU of each side per run (the machine's cores are the limit when
    // the workers, their handler processes and PostgreSQL share them).
    std::printf(
        "\nCPU per run, us (workers and handler processes: since they started, read before they "
        "stopped; PostgreSQL: the drain's cluster CPU), and context switches per run; medians of "
        "the rounds\n");
    std::printf("%6s %8s %9s %9s %9s %9s %11s %11s\n", "batch", "mode", "workers", "handlers", "PG",
                "total", "worker cs", "handler cs");
    for (int batch : batches)
      for (int m = 0; m < 2; ++m) {
        std::vector<double> w, h, pg, total, wcs, hcs;
        for (const auto& p : pairs) {
          if (p.batch != batch) continue;
          const BurnResult& b = p.of[m];
          const double runs = static_cast<double>(b.spec.runs);
          const IdleProcesses& pr = b.processes;
          w.push_back(pr.worker_cpu_s * 1e6 / runs);
          h.push_back(pr.host_cpu_s * 1e6 / runs);
          pg.push_back(b.drain.cpu_us);
          total.push_back(w.back() + h.back() + pg.back());
          wcs.push_back(pr.worker_switches / runs);
          hcs.push_back(pr.host_switches / runs);
        }
        std::printf("%6d %8s %9.1f %9.1f %9.1f %9.1f %11.2f %11.2f\n", batch, kIsolations[m],
                    median(w), median(h), median(pg), median(total), median(wcs), median(hcs));
      }
  }
  if (lat) {
    std::printf(
        "\nisolation latency: start_run() -> handler entered; one idle worker per mode, each on a "
        "database of its own; 2 x %d runs of bench_latency started one at a time, 5 ms apart, "
        "the modes alternating (thread, process, process, thread, ...) after %d warm-up runs "
        "each; ms\n",
        lat->samples, lat->warmup);
    std::printf("%-36s %8s %8s %8s %8s %8s\n", "", "p50", "p90", "p99", "max", "mean");
    const auto row = [](const std::string& what, const Percentiles& p) {
      std::printf("%-36s %8.3f %8.3f %8.3f %8.3f %8.3f\n", what.c_str(), p.p50, p.p90, p.p99, p.max,
                  p.mean);
    };
    for (int m = 0; m < 2; ++m) {
      row(fmt::format("{}: start_run() call", kIsolations[m]), lat->call[m]);
      row(fmt::format("{}: -> handler entered", kIsolations[m]), lat->to_handler[m]);
      row(fmt::format("{}: -> completion notified", kIsolations[m]), lat->to_completion[m]);
    }
    const double d50 = lat->to_handler[1].p50 - lat->to_handler[0].p50;
    std::printf(
        "process - thread, start -> handler: p50 %+.3f ms (target: at most %+.1f ms, %s), p99 "
        "%+.3f ms; workers serving after %.2f s (thread), %.2f s (process)\n",
        d50, kLatencyTargetMs, d50 <= kLatencyTargetMs ? "met" : "missed",
        lat->to_handler[1].p99 - lat->to_handler[0].p99, lat->ready_s[0], lat->ready_s[1]);
  }
}

// ---- starting runs ----------------------------------------------------------------------------

struct Start1Result {
  int sizes[2] = {0, 0};
  Percentiles call_ms[2];
  Row rows[2];
};

// Makes `app`'s session flush its statistics counters before this returns. PostgreSQL 15 flushes
// a session's counters as it goes idle, but at most once a second: when its last flush is more
// recent, the next comes 10 s later (PGSTAT_IDLE_INTERVAL), so a busy session that then idles is
// counted late (start1's row at 1,000 runs counted 0.05 heap tuples and 0.24 WAL records per run
// for starts that write 2 tuples and 10 records). A call made more than a second after the last
// flush is flushed as it ends, before its result is sent.
void flush_session_counters(RunStore& app) {
  std::this_thread::sleep_for(Millis(1100));
  value_or_throw(app.get_run("00000000-0000-0000-0000-000000000000"), "get_run");
}

// One long-lived connection calls start_run() one at a time: warmed on an empty table, timed at
// two table sizes.
Start1Result start_one_at_a_time(Env& env) {
  const Args& a = env.args;
  const std::string slug = "bench_single";
  const FlowInfo& flow = env.flows.at(slug);
  Start1Result r;
  const std::string conninfo = fresh_database(env, "wb_start1");
  auto app = value_or_throw(RunStore::connect(conninfo), "connect");
  value_or_throw(app.upsert_flow(flow.def, flow.version), "upsert " + slug);
  constexpr int kWarmup = 10;
  for (int i = 0; i < kWarmup; ++i)
    value_or_throw(app.start_run(slug, flow.version, Json{{"w", i}}), "start_run");
  long existing = kWarmup;
  for (int phase = 0; phase < 2; ++phase) {
    const long size = a.start_sizes[static_cast<std::size_t>(phase)];
    if (existing < size) {
      auto filler = value_or_throw(RunStore::connect(conninfo), "connect");
      start_backlog(filler, slug, flow.version, size - existing, kStartChunk);
      existing = size;
    }
    std::fprintf(stderr, "  start1: %ld runs exist; %d timed start_run() calls\n", existing,
                 a.start_samples);
    flush_session_counters(app);
    const auto before = snapshot(env, conninfo);
    std::vector<double> ms;
    const auto t0 = Clock::now();
    for (int i = 0; i < a.start_samples; ++i) {
      const auto t = Clock::now();
      StartOptions options;  // every other call with an idempotency key, as applications use them
      if (i % 2 == 1) options.idempotency_key = fmt::format("k{}-{}", phase, i);
      value_or_throw(app.start_run(slug, flow.version, Json{{"i", i}}, options), "start_run");
      ms.push_back(Seconds(Clock::now() - t).count() * 1e3);
    }
    const double seconds = seconds_between(t0, Clock::now());
    flush_session_counters(app);
    const auto after = snapshot(env, conninfo);
    existing += a.start_samples;
    r.sizes[phase] = static_cast<int>(size);
    r.call_ms[phase] = percentiles(ms);
    r.rows[phase] = cost_row("start1", fmt::format("start_run, {} runs exist", size),
                             a.start_samples, seconds, before, after);
    // One run per start_run() call: the counted functions do not say so (a keyed call is one of
    // start_runs, an unkeyed one of start_run).
    r.rows[phase].runs_per_call = 1;
  }
  return r;
}

// ---- scrape --------------------------------------------------------------------------------

struct ScrapeResult {
  int backlog = 0;
  double start_s = 0;         // starting the backlog
  double first_s = 0;         // the first read (a process's first scrape)
  double first_cpu_s = 0;     // the cluster's CPU during it
  Percentiles read_s;         // the reads after it
  int reads = 0;              // how many
  double cpu_per_read_s = 0;  // the cluster's CPU per read after the first
  std::int64_t queued = 0;    // bench_single's queued tasks, as the last read counted them
};

// The metrics' read of the run store (RunStore::scrape_counts, as metrics/store_metrics.cpp makes
// it) with `backlog` bench_single runs queued and analyzed.
ScrapeResult scrape_reads(Env& env, int backlog) {
  const Args& a = env.args;
  const std::string slug = "bench_single";
  const FlowInfo& flow = env.flows.at(slug);
  const std::string name = fmt::format("wb_scrape_{}", backlog);
  const std::string conninfo = fresh_database(env, name);
  ScrapeResult r;
  r.backlog = backlog;
  {
    auto filler = value_or_throw(RunStore::connect(conninfo), "connect");
    value_or_throw(filler.upsert_flow(flow.def, flow.version), "upsert " + slug);
    std::fprintf(stderr, "  scrape: starting %d runs\n", backlog);
    r.start_s = start_backlog(filler, slug, flow.version, backlog, 10'000);
  }
  analyze_all(env, conninfo);
  auto store = value_or_throw(RunStore::connect(conninfo), "connect");
  const auto timed = [&](std::optional<ScrapeWindow> window, double& cpu_s) {
    const double cpu0 = cluster_cpu_seconds(env.postmaster);
    const auto t0 = Clock::now();
    auto counts = value_or_throw(store.scrape_counts(std::move(window)), "scrape_counts");
    const double s = seconds_between(t0, Clock::now());
    cpu_s = cluster_cpu_seconds(env.postmaster) - cpu0;
    for (const auto& t : counts.tasks)
      if (t.flow_slug == slug) r.queued = t.queued;
    return std::make_pair(s, counts.next);
  };
  auto [first, window] = timed(std::nullopt, r.first_cpu_s);
  r.first_s = first;
  std::vector<double> reads;
  double cpu_total = 0;
  for (int i = 0; i < a.scrape_reads; ++i) {
    double cpu_s = 0;
    auto [s, next] = timed(window, cpu_s);
    reads.push_back(s);
    cpu_total += cpu_s;
    window = std::move(next);
  }
  r.reads = static_cast<int>(reads.size());
  r.read_s = percentiles(reads);
  r.cpu_per_read_s = cpu_total / a.scrape_reads;
  if (r.queued != backlog)
    throw ScenarioFailed(
        fmt::format("scrape: {} runs queued, the read counted {} queued tasks", backlog, r.queued));
  drop_database(env, conninfo, name);
  return r;
}

void print_scrapes(const std::vector<ScrapeResult>& results) {
  if (results.empty()) return;
  std::printf(
      "\nscrape: the metrics' read of the run store (RunStore::scrape_counts) with N one-step runs "
      "queued and analyzed; seconds; a metrics endpoint reads at most once a second and at most "
      "once every %g x its last read's duration\n",
      metrics::kReadCostFactor);
  std::printf("%-12s %9s %9s %9s %9s %9s %11s %12s\n", "queued", "start s", "1st read", "read p50",
              "read max", "reads", "CPU/read s", "min interval");
  for (const auto& r : results)
    std::printf("%-12d %9.2f %9.3f %9.3f %9.3f %9d %11.3f %12.1f\n", r.backlog, r.start_s,
                r.first_s, r.read_s.p50, r.read_s.max, r.reads, r.cpu_per_read_s,
                std::max(1.0, metrics::kReadCostFactor * r.read_s.p50));
}

// start_runs() in chunks of each size: cost per run.
std::vector<Row> start_batches(Env& env) {
  const Args& a = env.args;
  const std::string slug = "bench_single";
  const FlowInfo& flow = env.flows.at(slug);
  std::vector<Row> rows;
  for (int chunk : a.start_chunks) {
    const std::string conninfo = fresh_database(env, fmt::format("wb_startbatch_{}", chunk));
    CostSnapshot before;
    double seconds = 0;
    {
      auto store = value_or_throw(RunStore::connect(conninfo), "connect");
      value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert " + slug);
      before = snapshot(env, conninfo);
      seconds = start_backlog(store, slug, flow.version, a.runs, chunk);
    }
    // The store's connection closed: its counters are flushed as its backend exits.
    std::this_thread::sleep_for(Millis(200));
    const auto after = snapshot(env, conninfo);
    rows.push_back(cost_row("startbatch", fmt::format("start_runs x{}", chunk), a.runs, seconds,
                            before, after));
    std::fprintf(stderr, "  startbatch: %d runs in chunks of %d: %.2f s\n", a.runs, chunk, seconds);
  }
  return rows;
}

// ---- soak --------------------------------------------------------------------------------------

// Sizes of flowreg's tables (heap, indexes, TOAST) by name, in bytes.
std::map<std::string, long> table_sizes(pqxx::connection& c) {
  pqxx::nontransaction tx(c);
  std::map<std::string, long> out;
  for (const auto& row : tx.exec("SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                                 "WHERE relnamespace = 'flowreg'::regnamespace AND relkind = 'r'"))
    out[row[0].as<std::string>()] = row[1].as<long>();
  return out;
}

// The soak scenario (see the usage), printed as it goes: false when a table of a megabyte or more
// left ±20% of its size at --soak-stable-from after it, or the queue held more than 10 s of starts.
bool soak(Env& env) {
  const Args& a = env.args;
  const FlowInfo& flow = env.flows.at("bench_single");
  const std::string name = fmt::format("soak_r{}_m{}", a.soak_rate, a.soak_minutes);
  const std::string conninfo = fresh_database(env, "wb_" + name);
  auto store = value_or_throw(RunStore::connect(conninfo), "connect");
  value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert bench_single");
  const fs::path config = write_config(env, name, conninfo);
  {
    std::ofstream out(config, std::ios::app);
    const std::string age = fmt::format("{}s", a.soak_retention_s);
    out << "worker: {retention: {completed: " << age << ", failed: " << age
        << ", cancelled: " << age << ", events: " << age
        << ", interval: " << std::max(1, a.soak_retention_s / 30) << "s}}\n";
    if (!out.flush()) throw std::runtime_error("cannot write " + config.string());
  }
  auto workers = spawn_workers(env, name, config, a.workers.front(), a.batches.front());
  pqxx::connection reader(conninfo);
  std::printf(
      "\nsoak: %d bench_single runs/s for %d min, %d worker(s) at batch %d, retention %d s "
      "(sizes in KiB)\n",
      a.soak_rate, a.soak_minutes, a.workers.front(), a.batches.front(), a.soak_retention_s);
  // The held snapshot (--soak-hold): its minutes are marked '*'.
  std::optional<pqxx::connection> holder;
  std::optional<pqxx::transaction<pqxx::isolation_level::repeatable_read>> held;
  if (a.soak_hold_minutes > 0)
    std::printf("a snapshot held after minute %d for %d minute(s)\n", a.soak_hold_from,
                a.soak_hold_minutes);
  const auto cpu_now = [&] {
    double w = 0;
    for (auto& worker : workers) w += process_cpu_s(worker.pid());
    return std::pair(cluster_cpu_seconds(env.postmaster), w);
  };
  auto cpu_before = cpu_now();
  std::vector<std::map<std::string, long>> sizes;  // per minute
  std::vector<long> queued;                        // per minute
  long started = 0;
  const auto t0 = Clock::now();
  auto next_tick = t0;
  int minute = 0;
  std::vector<Json> inputs;
  while (minute < a.soak_minutes) {
    next_tick += Millis(100);
    std::this_thread::sleep_until(next_tick);
    const double elapsed = seconds_between(t0, Clock::now());
    for (long due = static_cast<long>(elapsed * a.soak_rate) - started; due > 0;) {
      const long n = std::min<long>(due, kStartChunk);
      inputs.assign(static_cast<std::size_t>(n), Json{{"n", started}});
      value_or_throw(store.start_runs("bench_single", flow.version, inputs), "start_runs");
      started += n;
      due -= n;
    }
    for (auto& w : workers)
      if (w.poll()) {
        const std::string why = name + ": a worker exited\n" + describe_workers(workers);
        stop_workers(workers);
        throw ScenarioFailed(why);
      }
    if (elapsed < 60.0 * (minute + 1)) continue;
    ++minute;
    long kept = 0;
    {
      pqxx::nontransaction tx(reader);
      const auto counts = tx.exec1(
          "SELECT (SELECT count(*) FROM flowreg.tasks WHERE status = 'queued'), "
          "(SELECT count(*) FROM flowreg.runs)");
      queued.push_back(counts[0].as<long>());
      kept = counts[1].as<long>();
    }
    sizes.push_back(table_sizes(reader));
    const auto cpu = cpu_now();
    if (minute == 1) {
      std::printf("%7s %9s %8s %9s %8s %8s", "minute", "started", "queued", "runs kept", "PG cpu",
                  "wk cpu");
      for (const auto& [table, bytes] : sizes.back())
        std::printf(" %14s", table.substr(0, 14).c_str());
      std::printf("\n");
    }
    std::printf("%6d%c %9ld %8ld %9ld %8.1f %8.1f", minute, held ? '*' : ' ', started,
                queued.back(), kept, cpu.first - cpu_before.first, cpu.second - cpu_before.second);
    for (const auto& [table, bytes] : sizes.back()) std::printf(" %14ld", bytes / 1024);
    std::printf("\n");
    std::fflush(stdout);
    cpu_before = cpu;
    if (a.soak_hold_minutes > 0 && minute == a.soak_hold_from) {
      holder.emplace(conninfo);
      held.emplace(*holder);
      held->exec("SELECT count(*) FROM flowreg.flows");  // the snapshot is taken here
    } else if (held && minute == a.soak_hold_from + a.soak_hold_minutes) {
      held->commit();
      held.reset();
    }
  }
  stop_workers(workers);
  drop_database(env, conninfo, "wb_" + name);

  const int from = a.soak_stable_from;
  if (from >= static_cast<int>(sizes.size())) {
    std::printf("soak: no minute after minute %d to compare with it\n", from);
    return false;
  }
  bool ok = true;
  std::printf("each table's smallest and largest size after minute %d, against its size then:\n",
              from);
  for (const auto& [table, base] : sizes[static_cast<std::size_t>(from - 1)]) {
    long lo = base, hi = base;
    for (std::size_t m = static_cast<std::size_t>(from); m < sizes.size(); ++m) {
      const auto it = sizes[m].find(table);
      const long b = it == sizes[m].end() ? 0 : it->second;
      lo = std::min(lo, b);
      hi = std::max(hi, b);
    }
    // Tables under a megabyte are left out of the verdict: a page more is a large share of them.
    const bool small = hi < 1024 * 1024;
    const double low = base > 0 ? static_cast<double>(lo) / static_cast<double>(base) - 1 : 0;
    const double high = base > 0 ? static_cast<double>(hi) / static_cast<double>(base) - 1 : 0;
    const bool within = small || (low >= -0.2 && high <= 0.2);
    ok = ok && within;
    std::printf("  %-24s %10ld KiB %+7.1f%% %+7.1f%%%s\n", table.c_str(), base / 1024, 100 * low,
                100 * high,
                small    ? "  (under 1 MiB)"
                : within ? ""
                         : "  OUTSIDE 20%");
  }
  const long most_queued = *std::max_element(queued.begin() + (from - 1), queued.end());
  std::printf("queued tasks from minute %d on: at most %ld (%.2f s of starts)\n", from, most_queued,
              static_cast<double>(most_queued) / static_cast<double>(a.soak_rate));
  if (most_queued > 10L * a.soak_rate) ok = false;
  std::printf("soak: %s\n", ok ? "steady" : "NOT steady");
  return ok;
}

// ---- report -----------------------------------------------------------------------------------

void print_burns(const char* title, const std::vector<BurnResult>& results) {
  if (results.empty()) return;
  std::printf("\n%s\n", title);
  std::printf("%-34s %7s %6s %8s %9s %9s %9s %9s %8s\n", "", "workers", "batch", "enqueue",
              "1st done", "total", "runs/s", "tasks/s", "steady");
  std::printf("%-34s %7s %6s %8s %9s %9s %9s %9s %8s\n", "", "", "", "runs/s", "s", "s", "", "",
              "runs/s");
  for (const auto& r : results) {
    const auto& s = r.spec;
    const double tasks = static_cast<double>(s.runs) * s.steps;
    const double steady_s = r.total_s - r.first_s;
    const std::string steady =
        s.steps == 1 && steady_s > 0
            ? fmt::format("{:.0f}", static_cast<double>(s.runs - 1) / steady_s)
            : "-";
    const std::string label =
        fmt::format("{} {}{}{}", s.slug, s.runs, s.analyze ? " ANALYZEd" : "",
                    s.isolation.empty() ? "" : fmt::format(" {} r{}", s.isolation, s.round));
    std::printf("%-34s %7d %6d %8.0f %9.3f %9.3f %9.0f %9.0f %8s\n", label.c_str(), s.workers,
                s.batch, static_cast<double>(s.runs) / r.enqueue_s, r.first_s, r.total_s,
                static_cast<double>(s.runs) / r.total_s, tasks / r.total_s, steady.c_str());
  }
  std::printf("cost per run:\n");
  print_rows_header();
  // Burn-downs of several flows say whose each row is.
  const bool flows = std::any_of(results.begin(), results.end(), [&](const BurnResult& r) {
    return r.spec.slug != results.front().spec.slug;
  });
  for (const auto& r : results) {
    const auto& s = r.spec;
    Row start = r.start, drain = r.drain;
    const std::string note = s.analyze              ? " (ANALYZEd)"
                             : !s.isolation.empty() ? fmt::format(" ({} r{})", s.isolation, s.round)
                             : flows                ? fmt::format(" ({} r{})", s.slug, s.round)
                                                    : "";
    start.what = fmt::format("w{} b{} {}{}", s.workers, s.batch, start.what, note);
    drain.what = fmt::format("w{} b{} {}{}", s.workers, s.batch, drain.what, note);
    print_row(start);
    print_row(drain);
  }
}

// Rounds of three burn-downs, a baseline then two others (`names`: what each is): each round's
// rates and the two others' ratios to the baseline, then their mean ratios.
void print_ratio_rounds(const char* title, const std::array<const char*, 3>& names,
                        const std::vector<std::vector<BurnResult>>& rounds) {
  std::fputs(title, stdout);
  const auto col = [&](std::size_t i, const char* what) {
    return fmt::format("{} {}", names[i], what);
  };
  std::printf("%5s %8s %12s %12s %12s %12s %12s\n", "round", "runs", col(0, "r/s").c_str(),
              col(1, "r/s").c_str(), col(2, "r/s").c_str(), col(1, "ratio").c_str(),
              col(2, "ratio").c_str());
  const auto rate = [](const BurnResult& b) {
    return static_cast<double>(b.spec.runs) / b.total_s;
  };
  double sum1 = 0, sum2 = 0;
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    const auto& k = rounds[i];
    sum1 += rate(k[1]) / rate(k[0]);
    sum2 += rate(k[2]) / rate(k[0]);
    std::printf("%5zu %8ld %12.0f %12.0f %12.0f %12.3f %12.3f\n", i + 1, k[0].spec.runs, rate(k[0]),
                rate(k[1]), rate(k[2]), rate(k[1]) / rate(k[0]), rate(k[2]) / rate(k[0]));
  }
  const auto n = static_cast<double>(rounds.size());
  std::printf("mean rate ratio to %s: %s %.3f, %s %.3f\n", rounds[0][0].spec.slug.c_str(), names[1],
              sum1 / n, names[2], sum2 / n);
}

// ---- schedules --------------------------------------------------------------------------------

struct SchedulesResult {
  int schedules = 0, workers = 0;
  std::vector<std::pair<std::string, long>> per_tick;  // tick, runs started for it
  long duplicates = 0;                                 // keys started more than once
  Percentiles lag_ms;                                  // created_at - tick, over every run
  double pg_cpu_s = 0;                                 // the cluster's CPU over the minutes
  std::string ends;
};

// --schedules schedules of bench_single firing every minute, fired by --schedule-workers workers
// (which also run the runs) for --schedule-minutes ticks; the first tick is the next whole minute
// at least 20 s away (the workers start meanwhile).
SchedulesResult schedules_scenario(Env& env) {
  const Args& a = env.args;
  const FlowInfo& flow = env.flows.at("bench_single");
  const std::string name = "schedules";
  const std::string conninfo = fresh_database(env, "wb_" + name);
  {
    auto store = value_or_throw(RunStore::connect(conninfo), "connect");
    value_or_throw(store.upsert_flow(flow.def, flow.version), "upsert bench_single");
  }
  const std::string first =
      psql(env, conninfo,
           "SELECT to_char(date_trunc('minute', now() + interval '80 seconds') AT TIME ZONE 'UTC', "
           "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
  psql(env, conninfo,
       fmt::format("INSERT INTO flowreg.schedules (name, flow_slug, cron, timezone, input, "
                   "time_key, catch_up, catch_up_max, overlap, source, next_fire_at) "
                   "SELECT 'bench_' || i, 'bench_single', '* * * * *', 'UTC', '{{}}', "
                   "'scheduled_at', 'latest', 100, 'allow', 'api', '{}'::timestamptz "
                   "FROM generate_series(1, {}) AS i",
                   first, a.schedules));
  psql(env, conninfo, "ANALYZE flowreg.schedules");
  const fs::path config = write_config(env, name, conninfo);
  auto workers = spawn_workers(env, name, config, a.schedule_workers, a.batches.front());
  // Until the last tick's runs all started (or its minute is over), then 5 s more.
  const std::string last = psql(
      env, conninfo,
      fmt::format("SELECT to_char(('{}'::timestamptz + interval '{} minutes') AT TIME ZONE 'UTC', "
                  "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
                  first, a.schedule_minutes - 1));
  const double cpu0 = cluster_cpu_seconds(env.postmaster);
  const auto deadline =
      Clock::now() + std::chrono::seconds(80 + 60 * a.schedule_minutes + a.timeout_s);
  for (;;) {
    for (auto& w : workers)
      if (w.poll()) {
        const auto why = describe_workers(workers);
        stop_workers(workers);
        throw ScenarioFailed("schedules: a worker exited\n" + why);
      }
    const std::string started = psql(
        env, conninfo,
        fmt::format("SELECT count(*) FROM flowreg.runs WHERE idempotency_key LIKE 'schedule:%:{}'",
                    last));
    if (std::stol(started) >= a.schedules) break;
    if (Clock::now() > deadline) {
      const auto why = describe_workers(workers);
      stop_workers(workers);
      throw ScenarioFailed(fmt::format("schedules: {} of {} runs of tick {} started\n{}", started,
                                       a.schedules, last, why));
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));  // a read of the runs: not too often
  }
  std::this_thread::sleep_for(std::chrono::seconds(5));
  SchedulesResult r;
  r.schedules = a.schedules;
  r.workers = a.schedule_workers;
  r.pg_cpu_s = cluster_cpu_seconds(env.postmaster) - cpu0;
  const auto ends = stop_workers(workers);
  for (const auto& e : ends) r.ends += (r.ends.empty() ? "" : ", ") + e;
  const std::string ticks = psql(
      env, conninfo,
      "SELECT string_agg(t || '=' || n, ' ' ORDER BY t) FROM (SELECT input->>'scheduled_at' AS t, "
      "count(*) AS n FROM flowreg.runs GROUP BY 1) x");
  std::istringstream in(ticks);
  for (std::string item; in >> item;) {
    const auto eq = item.find('=');
    r.per_tick.emplace_back(item.substr(0, eq), std::stol(item.substr(eq + 1)));
  }
  r.duplicates = std::stol(psql(env, conninfo,
                                "SELECT count(*) - count(DISTINCT idempotency_key) FROM "
                                "flowreg.runs"));
  const std::string lags = psql(
      env, conninfo,
      "SELECT string_agg((extract(epoch FROM created_at - (input->>'scheduled_at')::timestamptz) "
      "* 1000)::numeric(12, 3)::text, ' ') FROM flowreg.runs");
  std::vector<double> v;
  std::istringstream lin(lags);
  for (double x; lin >> x;) v.push_back(x);
  r.lag_ms = percentiles(std::move(v));
  return r;
}

void print_schedules(const SchedulesResult& r) {
  std::printf(
      "\nschedules: %d schedules of bench_single, each `* * * * *`, fired by %d worker(s) that "
      "also run the runs (batch of the first --batch)\n",
      r.schedules, r.workers);
  for (const auto& [tick, n] : r.per_tick)
    std::printf("  tick %s: %ld runs%s\n", tick.c_str(), n,
                n == r.schedules ? "" : "  <- not one per schedule");
  std::printf("  duplicate idempotency keys: %ld\n", r.duplicates);
  std::printf("  fire lag (run created_at - tick), ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n",
              r.lag_ms.p50, r.lag_ms.p90, r.lag_ms.p99, r.lag_ms.max);
  std::printf("  PostgreSQL CPU over the ticks: %.2f s; workers: %s\n", r.pg_cpu_s, r.ends.c_str());
}

int run_bench(Env& env) {
  const Args& a = env.args;
  std::vector<BurnResult> singles, chains, fanouts, backlogs;
  std::vector<std::pair<BurnResult, BurnResult>> metrics_pairs;     // without, with --metrics
  std::vector<std::pair<BurnResult, BurnResult>> longreader_pairs;  // plain, snapshot held
  // pg_dump throughout the drain: of another database as large, of the drained one
  std::vector<std::pair<BurnResult, BurnResult>> longreader_dumps;
  std::optional<BurnResult> retention_burn;
  bool soak_steady = true;
  std::vector<std::pair<BurnResult, BurnResult>> priority_pairs;  // priority 0, 10 priorities
  std::vector<std::vector<BurnResult>> key_rounds;  // bench_single, bench_keyed, bench_keyed_runs
  std::vector<std::pair<BurnResult, BurnResult>> rate_pairs;  // bench_single, bench_rated_high
  std::optional<BurnResult> rated_1000;
  std::vector<std::pair<BurnResult, BurnResult>> wait_pairs;  // bench_single alone, beside sleepers
  std::optional<BurnResult> woken;                            // bench_nap, all waking at once
  std::vector<std::vector<BurnResult>> cond_rounds;   // bench_chain, bench_cond, bench_cond_skip
  std::vector<std::vector<BurnResult>> child_rounds;  // bench_single, bench_chain, bench_parent
  std::optional<BurnResult> awake;  // bench_nap, every sleep over before the runs started
  std::optional<Start1Result> start1;
  std::vector<Row> startbatch;
  std::optional<LatencyResult> lat;
  std::vector<ScrapeResult> scrapes;
  std::vector<IsolationPair> isolation_pairs;
  std::optional<IsolationLatency> isolation_lat;
  std::optional<SchedulesResult> scheduled;
  const auto report = [&] {
    print_burns(
        "single: burn-down of single-step runs started before the workers; time from spawning "
        "the workers to the last run's completion, worker start-up included; 'steady' leaves out "
        "the time to the first completion",
        singles);
    print_burns(
        "chain: burn-down of 3-step chains (a -> b -> c); a worker completing a step gets the "
        "next one claimed in the same call, so a run goes on at once: '1st done' is about one "
        "batch's three round trips",
        chains);
    print_burns(
        "fanout: burn-down of split -> map over its 8 elements (9 tasks per run); the worker "
        "completing split gets the map's tasks claimed in the same call, as far as its room goes",
        fanouts);
    print_burns("backlog: single-step backlogs drained as started, then after ANALYZE", backlogs);
    for (std::size_t i = 0; i + 1 < backlogs.size(); i += 2) {
      const auto& plain = backlogs[i];
      const auto& analyzed = backlogs[i + 1];
      const double ratio = (static_cast<double>(analyzed.spec.runs) / analyzed.total_s) /
                           (static_cast<double>(plain.spec.runs) / plain.total_s);
      std::printf("backlog %ld: rate after ANALYZE / rate as started = %.3f\n", plain.spec.runs,
                  ratio);
    }
    if (start1) {
      std::printf(
          "\nstart1: one connection, start_run() one call at a time, every other one with an "
          "idempotency key (10 warm-up calls on an empty table first); call latency, ms\n");
      std::printf("%-34s %8s %8s %8s %8s %8s\n", "runs existing", "p50", "p90", "p99", "max",
                  "mean");
      for (int i = 0; i < 2; ++i) {
        const auto& p = start1->call_ms[i];
        std::printf("%-34d %8.3f %8.3f %8.3f %8.3f %8.3f\n", start1->sizes[i], p.p50, p.p90, p.p99,
                    p.max, p.mean);
      }
      std::printf("ratio at %d / at %d runs: p50 %.3f, p99 %.3f\n", start1->sizes[1],
                  start1->sizes[0], start1->call_ms[1].p50 / start1->call_ms[0].p50,
                  start1->call_ms[1].p99 / start1->call_ms[0].p99);
      std::printf("cost per run:\n");
      print_rows_header();
      print_row(start1->rows[0]);
      print_row(start1->rows[1]);
    }
    if (!startbatch.empty()) {
      std::printf("\nstartbatch: start_runs() of %d runs per chunk size; cost per run\n", a.runs);
      print_rows_header();
      for (const auto& r : startbatch) print_row(r);
    }
    if (lat) print_latency(*lat);
    print_scrapes(scrapes);
    if (!metrics_pairs.empty()) {
      std::printf("\nmetrics: burn-downs of bench_single without and with `worker --metrics`\n");
      std::printf("%5s %8s %12s %12s %12s %12s %12s\n", "round", "runs", "without s", "with s",
                  "without r/s", "with r/s", "with/without");
      double sum = 0;
      for (std::size_t i = 0; i < metrics_pairs.size(); ++i) {
        const auto& off = metrics_pairs[i].first;
        const auto& on = metrics_pairs[i].second;
        const double ratio = on.total_s / off.total_s;
        sum += ratio;
        std::printf("%5zu %8ld %12.3f %12.3f %12.0f %12.0f %12.3f\n", i + 1, off.spec.runs,
                    off.total_s, on.total_s, static_cast<double>(off.spec.runs) / off.total_s,
                    static_cast<double>(on.spec.runs) / on.total_s, ratio);
      }
      std::printf("mean time ratio (with / without): %.3f\n",
                  sum / static_cast<double>(metrics_pairs.size()));
    }
    if (retention_burn && retention_burn->retained) {
      std::printf(
          "\nretention: %ld bench_single runs drained, aged 2 hours, then one round of retention "
          "(completed: 1h), 1,000 runs per transaction; cost per run deleted\n",
          retention_burn->spec.runs);
      print_rows_header();
      print_row(retention_burn->drain);
      print_row(*retention_burn->retained);
      std::printf("deleted %.0f runs/s\n", static_cast<double>(retention_burn->spec.runs) /
                                               retention_burn->retained->seconds);
    }
    if (!longreader_pairs.empty()) {
      std::printf(
          "\nlongreader: burn-downs of bench_single, plain and with a REPEATABLE READ snapshot "
          "held from before the starts to the end of the drain; then with pg_dump running "
          "throughout the drain (one dump after the other) of another database as large (other: "
          "the dumps' CPU) and of the drained one (own: their CPU and their snapshots)\n");
      std::printf("%5s %8s %10s %10s %10s %10s %10s %10s %10s %10s %6s\n", "round", "runs",
                  "plain r/s", "held r/s", "held/plain", "dead tasks", "dead runs", "other r/s",
                  "own r/s", "own/other", "dumps");
      std::vector<double> ratios, dump_ratios;
      for (std::size_t i = 0; i < longreader_pairs.size(); ++i) {
        const auto& plain = longreader_pairs[i].first;
        const auto& held = longreader_pairs[i].second;
        const auto& other = longreader_dumps.at(i).first;
        const auto& own = longreader_dumps.at(i).second;
        const double p = static_cast<double>(plain.spec.runs) / plain.total_s;
        const double h = static_cast<double>(held.spec.runs) / held.total_s;
        const double o = static_cast<double>(other.spec.runs) / other.total_s;
        const double d = static_cast<double>(own.spec.runs) / own.total_s;
        ratios.push_back(h / p);
        dump_ratios.push_back(d / o);
        std::printf("%5zu %8ld %10.0f %10.0f %10.3f %10ld %10ld %10.0f %10.0f %10.3f %3d+%d\n",
                    i + 1, plain.spec.runs, p, h, h / p, held.dead_tasks, held.dead_runs, o, d,
                    d / o, other.dumps, own.dumps);
      }
      std::printf(
          "median rate ratios: held / plain %.3f; dumping its own database / another "
          "%.3f\n",
          median(ratios), median(dump_ratios));
    }
    if (!priority_pairs.empty()) {
      std::printf(
          "\npriorities: burn-downs of bench_single, all at priority 0 and started with "
          "10 priorities\n");
      std::printf("%5s %8s %12s %12s %12s %12s %12s\n", "round", "runs", "plain s", "10 prio s",
                  "plain r/s", "10 prio r/s", "rate ratio");
      double sum = 0;
      for (std::size_t i = 0; i < priority_pairs.size(); ++i) {
        const auto& plain = priority_pairs[i].first;
        const auto& mixed = priority_pairs[i].second;
        const double ratio = plain.total_s / mixed.total_s;
        sum += ratio;
        std::printf("%5zu %8ld %12.3f %12.3f %12.0f %12.0f %12.3f\n", i + 1, plain.spec.runs,
                    plain.total_s, mixed.total_s,
                    static_cast<double>(plain.spec.runs) / plain.total_s,
                    static_cast<double>(mixed.spec.runs) / mixed.total_s, ratio);
      }
      std::printf("mean rate ratio (10 priorities / plain): %.3f\n",
                  sum / static_cast<double>(priority_pairs.size()));
    }
    if (!key_rounds.empty()) {
      print_ratio_rounds(
          "\nkeys: burn-downs of bench_single, and of bench_keyed (step) and bench_keyed_runs "
          "(flow), limited to 2 at once per key, over 1,000 keys\n",
          {"plain", "step", "flow"}, key_rounds);
      std::vector<BurnResult> burns;
      for (const auto& k : key_rounds) burns.insert(burns.end(), k.begin(), k.end());
      print_burns("keys: every burn-down, in the order run", burns);
    }
    if (!rate_pairs.empty()) {
      std::printf(
          "\nrates: burn-downs of bench_single and bench_rated_high (a rate limit of 1,000,000 "
          "task starts per second)\n");
      std::printf("%5s %8s %12s %12s %10s\n", "round", "runs", "plain r/s", "rated r/s", "ratio");
      double sum = 0;
      for (std::size_t i = 0; i < rate_pairs.size(); ++i) {
        const auto& [plain, rated] = rate_pairs[i];
        const double p = static_cast<double>(plain.spec.runs) / plain.total_s;
        const double q = static_cast<double>(rated.spec.runs) / rated.total_s;
        sum += q / p;
        std::printf("%5zu %8ld %12.0f %12.0f %10.3f\n", i + 1, plain.spec.runs, p, q, q / p);
      }
      std::printf("mean rate ratio (rate limit above the drain / plain): %.3f\n",
                  sum / static_cast<double>(rate_pairs.size()));
    }
    if (!wait_pairs.empty()) {
      std::printf(
          "\nwaits: burn-downs of bench_single alone and beside %ld runs of bench_nap "
          "asleep and %ld runs of bench_approval waiting for a signal\n",
          a.sleepers, a.waiters);
      std::printf("%5s %8s %12s %12s %10s\n", "round", "runs", "alone r/s", "beside r/s", "ratio");
      double sum = 0, plain_sum = 0;
      for (std::size_t i = 0; i < wait_pairs.size(); ++i) {
        const auto& [alone, beside] = wait_pairs[i];
        const double p = static_cast<double>(alone.spec.runs) / alone.total_s;
        const double q = static_cast<double>(beside.spec.runs) / beside.total_s;
        sum += q / p;
        plain_sum += p;
        std::printf("%5zu %8ld %12.0f %12.0f %10.3f\n", i + 1, alone.spec.runs, p, q, q / p);
      }
      const double plain = plain_sum / static_cast<double>(wait_pairs.size());
      std::printf("mean rate ratio (beside the sleepers and waiters / alone): %.3f\n",
                  sum / static_cast<double>(wait_pairs.size()));
      if (woken && awake) {
        const double woke = static_cast<double>(woken->spec.runs) / woken->wake_s;
        const double drain = static_cast<double>(awake->spec.runs) / awake->total_s;
        std::printf(
            "waits: %ld runs of bench_nap (sleep -> no-op) whose sleeps ended at the same time: "
            "the last completed %.2f s after that time, %.0f runs/s (%.0f tasks/s); the same "
            "runs with their sleeps over before they started drained at %.0f runs/s: ratio "
            "%.3f (bench_single alone above: %.0f runs/s)\n",
            woken->spec.runs, woken->wake_s, woke, 2.0 * woke, drain, woke / drain, plain);
      }
    }
    if (!cond_rounds.empty()) {
      print_ratio_rounds(
          "\nconditions: burn-downs of bench_chain (a -> b -> c), bench_cond (the same with a "
          "condition on b that holds) and bench_cond_skip (one that does not: b and c skipped)\n",
          {"chain", "cond", "skip"}, cond_rounds);
      std::vector<BurnResult> burns;
      for (const auto& k : cond_rounds) burns.insert(burns.end(), k.begin(), k.end());
      print_burns("conditions: every burn-down, in the order run", burns);
    }
    if (!child_rounds.empty()) {
      print_ratio_rounds(
          "\nchildren: burn-downs of bench_single (one task), bench_chain (a -> b -> c) and "
          "bench_parent (a flow step starting a run of bench_single), in runs/s of the flow "
          "named\n",
          {"single", "chain", "parent"}, child_rounds);
      std::vector<BurnResult> burns;
      for (const auto& k : child_rounds) burns.insert(burns.end(), k.begin(), k.end());
      print_burns("children: every burn-down, in the order run", burns);
    }
    if (rated_1000 && !rated_1000->times.empty()) {
      const auto& t = rated_1000->times;
      const double from = t.front() + 2, to = from + 30;
      const auto n =
          std::count_if(t.begin(), t.end(), [&](double x) { return x >= from && x < to; });
      std::printf(
          "\nrates: bench_rated_1000 (1,000 task starts per second), %zu runs: %.1f completions "
          "per second over the 30 s from 2 s after the first (%.3f of the limit); first %.2f s, "
          "last %.2f s\n",
          t.size(), static_cast<double>(n) / 30.0, static_cast<double>(n) / 30.0 / 1000.0,
          t.front(), t.back());
    }
    if (!isolation_pairs.empty()) {
      std::vector<BurnResult> burns;
      for (const auto& p : isolation_pairs) burns.insert(burns.end(), {p.of[0], p.of[1]});
      print_burns("isolation: every burn-down, in the order run", burns);
    }
    print_isolation(a, isolation_pairs, isolation_lat);
    if (scheduled) print_schedules(*scheduled);
    std::printf("\nworker command lines:\n");
    for (const auto& c : env.commands) std::printf("  %s\n", c.c_str());
    if (!a.json_file.empty()) {
      Json rows = Json::array();
      std::vector<BurnResult> isolation_burns;
      for (const auto& p : isolation_pairs)
        isolation_burns.insert(isolation_burns.end(), {p.of[0], p.of[1]});
      for (const auto* list : {&singles, &chains, &fanouts, &backlogs, &isolation_burns})
        for (const auto& b : *list) {
          for (const Row* row : {&b.start, &b.drain}) {
            Json j = row_json(*row);
            j["flow"] = b.spec.slug;
            j["workers"] = b.spec.workers;
            j["batch"] = b.spec.batch;
            j["analyzed"] = b.spec.analyze;
            j["first_s"] = b.first_s;
            if (!b.spec.isolation.empty()) {
              j["isolation"] = b.spec.isolation;
              j["round"] = b.spec.round;
              const IdleProcesses& pr = b.processes;
              j["idle_memory_kib"] = {{"workers", pr.workers},
                                      {"worker_rss_median", pr.worker_rss_kb},
                                      {"handler_hosts", pr.hosts},
                                      {"host_rss_median", pr.host_rss_kb},
                                      {"host_pss_median", pr.host_pss_kb}};
              j["cpu_s"] = {{"workers", pr.worker_cpu_s}, {"handler_hosts", pr.host_cpu_s}};
              j["context_switches"] = {{"workers", pr.worker_switches},
                                       {"handler_hosts", pr.host_switches}};
            }
            rows.push_back(j);
          }
        }
      if (start1)
        for (int i = 0; i < 2; ++i) {
          Json j = row_json(start1->rows[i]);
          j["existing_runs"] = start1->sizes[i];
          j["call_ms"] = {{"p50", start1->call_ms[i].p50},
                          {"p90", start1->call_ms[i].p90},
                          {"p99", start1->call_ms[i].p99},
                          {"max", start1->call_ms[i].max},
                          {"mean", start1->call_ms[i].mean}};
          rows.push_back(j);
        }
      for (const auto& r : startbatch) rows.push_back(row_json(r));
      if (lat) {
        const auto pj = [](const Percentiles& p) {
          return Json{
              {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"max", p.max}, {"mean", p.mean}};
        };
        rows.push_back(Json{{"scenario", "latency"},
                            {"samples", lat->samples},
                            {"start_run_call_ms", pj(lat->start_call)},
                            {"start_to_handler_ms", pj(lat->to_handler)},
                            {"start_run_call_unflushed_ms", pj(lat->start_call_async)},
                            {"start_to_handler_unflushed_ms", pj(lat->to_handler_async)},
                            {"floor_insert_ms", pj(lat->floor_insert)},
                            {"disk_flush_ms", pj(lat->flush_ms)},
                            {"disk_flush_after_5ms_ms", pj(lat->flush_idle_ms)},
                            {"start_to_completion_ms", pj(lat->to_completion)}});
      }
      if (isolation_lat) {
        const auto pj = [](const Percentiles& p) {
          return Json{
              {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"max", p.max}, {"mean", p.mean}};
        };
        for (int m = 0; m < 2; ++m)
          rows.push_back(Json{{"scenario", "isolation_latency"},
                              {"isolation", kIsolations[m]},
                              {"samples", isolation_lat->samples},
                              {"start_run_call_ms", pj(isolation_lat->call[m])},
                              {"start_to_handler_ms", pj(isolation_lat->to_handler[m])},
                              {"start_to_completion_ms", pj(isolation_lat->to_completion[m])}});
      }
      for (const auto& r : scrapes)
        rows.push_back(Json{{"scenario", "scrape"},
                            {"queued", r.backlog},
                            {"start_s", r.start_s},
                            {"first_read_s", r.first_s},
                            {"first_read_cpu_s", r.first_cpu_s},
                            {"reads", r.reads},
                            {"read_s", {{"p50", r.read_s.p50}, {"max", r.read_s.max}}},
                            {"cpu_per_read_s", r.cpu_per_read_s}});
      std::ofstream out(a.json_file);
      out << Json{{"bench", "worker_bench"}, {"rows", rows}}.dump(2) << "\n";
      if (!out.flush())
        std::fprintf(stderr, "worker_bench: cannot write %s\n", a.json_file.c_str());
    }
  };
  try {
    if (a.wants("single"))
      for (int batch : a.batches)
        for (int w : a.workers)
          singles.push_back(burn_down(env, {"single", "bench_single", 1, w, batch, a.runs, false}));
    if (a.wants("chain"))
      for (int w : a.workers)
        chains.push_back(
            burn_down(env, {"chain", "bench_chain", 3, w, a.batches.front(), a.runs, false}));
    if (a.wants("fanout"))
      for (int w : a.workers)
        fanouts.push_back(
            burn_down(env, {"fanout", "bench_fanout", 9, w, a.batches.front(), a.runs, false}));
    if (a.wants("backlog"))
      for (int size : a.backlog)
        for (bool analyze : {false, true})
          backlogs.push_back(burn_down(env, {"backlog", "bench_single", 1, a.backlog_workers,
                                             a.batches.front(), size, analyze}));
    if (a.wants("start1")) start1 = start_one_at_a_time(env);
    if (a.wants("startbatch")) startbatch = start_batches(env);
    if (a.wants("latency")) lat = latency(env);
    if (a.wants("metrics"))
      for (int round = 1; round <= a.metrics_rounds; ++round) {
        std::pair<BurnResult, BurnResult> pair;
        for (const bool on : {false, true}) {
          BurnSpec spec{"metrics",         "bench_single", 1,    a.workers.front(),
                        a.batches.front(), a.runs,         false};
          spec.metrics = on;
          spec.round = round;
          (on ? pair.second : pair.first) = burn_down(env, spec);
        }
        metrics_pairs.push_back(pair);
      }
    if (a.wants("soak") && !soak(env)) soak_steady = false;
    if (a.wants("retention")) {
      BurnSpec spec{"retention",       "bench_single", 1,    a.workers.front(),
                    a.batches.front(), a.runs,         false};
      spec.retain = true;
      retention_burn = burn_down(env, spec);
    }
    if (a.wants("longreader"))
      for (int round = 1; round <= a.longreader_rounds; ++round) {
        std::pair<BurnResult, BurnResult> pair;  // plain, held
        for (const bool hold : {round % 2 == 0, round % 2 != 0}) {
          BurnSpec spec{"longreader",      "bench_single", 1,    a.workers.front(),
                        a.batches.front(), a.runs,         false};
          spec.round = round;
          spec.hold_snapshot = hold;
          (hold ? pair.second : pair.first) = burn_down(env, spec);
        }
        longreader_pairs.push_back(pair);
        std::pair<BurnResult, BurnResult> dumped;  // dumps of another database, of its own
        for (const bool own : {round % 2 == 0, round % 2 != 0}) {
          BurnSpec spec{"longreader",      "bench_single", 1,    a.workers.front(),
                        a.batches.front(), a.runs,         false};
          spec.round = round;
          spec.pg_dump = true;
          if (!own) spec.dump_other = dumpee(env);
          (own ? dumped.second : dumped.first) = burn_down(env, spec);
        }
        longreader_dumps.push_back(dumped);
      }
    if (a.wants("priorities"))
      for (int round = 1; round <= a.priority_rounds; ++round) {
        std::pair<BurnResult, BurnResult> pair;
        for (const int levels : {0, 10}) {
          BurnSpec spec{"priorities",      "bench_single", 1,    a.workers.front(),
                        a.batches.front(), a.runs,         false};
          spec.round = round;
          spec.priority_levels = levels;
          (levels > 0 ? pair.second : pair.first) = burn_down(env, spec);
        }
        priority_pairs.push_back(pair);
      }
    if (a.wants("keys"))
      for (int round = 1; round <= a.priority_rounds; ++round) {
        std::vector<BurnResult> burns;
        for (const char* slug : {"bench_single", "bench_keyed", "bench_keyed_runs"}) {
          BurnSpec spec{"keys", slug, 1, a.workers.front(), a.batches.front(), a.runs, false};
          spec.round = round;
          spec.keys = 1000;
          burns.push_back(burn_down(env, spec));
        }
        key_rounds.push_back(std::move(burns));
      }
    if (a.wants("rates")) {
      for (int round = 1; round <= a.priority_rounds; ++round) {
        std::pair<BurnResult, BurnResult> pair;
        for (const char* slug : {"bench_single", "bench_rated_high"}) {
          BurnSpec spec{"rates", slug, 1, a.workers.front(), a.batches.front(), a.runs, false};
          spec.round = round;
          (std::string(slug) == "bench_single" ? pair.first : pair.second) = burn_down(env, spec);
        }
        rate_pairs.push_back(std::move(pair));
      }
      BurnSpec spec{"rates", "bench_rated_1000", 1, a.workers.front(), a.batches.front(), 40'000,
                    false};
      spec.times = true;
      rated_1000 = burn_down(env, spec);
    }
    if (a.wants("conditions"))
      for (int round = 1; round <= a.priority_rounds; ++round) {
        std::vector<BurnResult> burns;
        for (const char* slug : {"bench_chain", "bench_cond", "bench_cond_skip"}) {
          BurnSpec spec{"conditions",
                        slug,
                        std::string(slug) == "bench_cond_skip" ? 1 : 3,
                        a.workers.front(),
                        a.batches.front(),
                        a.runs,
                        false};
          spec.round = round;
          burns.push_back(burn_down(env, spec));
        }
        cond_rounds.push_back(std::move(burns));
      }
    if (a.wants("children"))
      for (int round = 1; round <= a.priority_rounds; ++round) {
        std::vector<BurnResult> burns;
        for (const char* slug : {"bench_single", "bench_chain", "bench_parent"}) {
          const std::string s = slug;
          BurnSpec spec{"children",
                        s,
                        s == "bench_chain"    ? 3
                        : s == "bench_parent" ? 2
                                              : 1,
                        a.workers.front(),
                        a.batches.front(),
                        a.runs,
                        false};
          spec.round = round;
          if (s == "bench_parent") spec.child = "bench_single";
          burns.push_back(burn_down(env, spec));
        }
        child_rounds.push_back(std::move(burns));
      }
    if (a.wants("waits")) {
      for (int round = 1; round <= a.priority_rounds; ++round) {
        std::pair<BurnResult, BurnResult> pair;
        // Alone first in odd rounds, beside the sleepers first in even ones.
        for (const bool sleepers : {round % 2 == 0, round % 2 == 1}) {
          BurnSpec spec{"waits",           "bench_single", 1,    a.workers.front(),
                        a.batches.front(), a.runs,         false};
          spec.round = round;
          spec.sleepers = sleepers ? a.sleepers : 0;
          spec.waiters = sleepers ? a.waiters : 0;
          (sleepers ? pair.second : pair.first) = burn_down(env, spec);
        }
        wait_pairs.push_back(std::move(pair));
      }
      BurnSpec spec{"waits",           "bench_nap", 2,    a.workers.front(),
                    a.batches.front(), a.sleepers,  false};
      spec.wake_in_s = 30;
      woken = burn_down(env, spec);
      // The same runs with their sleeps over before they started: the flow's drain rate.
      spec.wake_in_s = 0;
      spec.woke_before = true;
      awake = burn_down(env, spec);
    }
    if (a.wants("scrape"))
      for (int size : a.scrape_backlog) scrapes.push_back(scrape_reads(env, size));
    if (a.wants("isolation")) {
      const std::vector<int> batches = a.batches_given ? a.batches : std::vector<int>{64, 512};
      for (int round = 1; round <= a.isolation_rounds; ++round)
        for (int batch : batches) {
          IsolationPair pair;
          pair.round = round;
          pair.batch = batch;
          // Thread first in odd rounds, process first in even ones: drift cancels in the medians.
          const int first = round % 2 == 1 ? 0 : 1;
          pair.first = kIsolations[first];
          for (const int m : {first, 1 - first}) {
            BurnSpec spec{"isolation", "bench_single", 1, a.workers.front(), batch, a.runs, false};
            spec.isolation = kIsolations[m];
            spec.processes = true;
            spec.round = round;
            pair.of[m] = burn_down(env, spec);
          }
          isolation_pairs.push_back(pair);
        }
      isolation_lat = isolation_latency(env);
    }
    if (a.wants("schedules")) scheduled = schedules_scenario(env);
  } catch (const ScenarioFailed& e) {
    report();
    std::printf("\nSCENARIO FAILED: %s\n", e.what());
    return 1;
  }
  report();
  return soak_steady ? 0 : 1;
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

  const auto joined = [](const auto& list) {
    std::string s;
    for (const auto& x : list) s += (s.empty() ? "" : ",") + fmt::format("{}", x);
    return s;
  };
  std::printf(
      "worker_bench: only %s; runs %d, workers %s, concurrency %d, batch %s, backlog %s (%d "
      "workers), start sizes %s x %d calls, start chunks %s, samples %d\n",
      joined(a.only).c_str(), a.runs, joined(a.workers).c_str(), a.concurrency,
      joined(a.batches).c_str(), joined(a.backlog).c_str(), a.backlog_workers,
      joined(a.start_sizes).c_str(), a.start_samples, joined(a.start_chunks).c_str(), a.samples);
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
    auto status = value_or_throw(cluster->status(), "cluster status");
    env.postmaster = status.postmaster_pid;
    env.psql = status.bin_dir / "psql";
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
