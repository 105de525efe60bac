#pragma once
// Handler processes (isolation: process): a plugin's handlers run in processes of their own, so
// that a crash, a hang or a limit costs the one task, never the worker.
//
// A pool per plugin (its private copy) and set of limits keeps up to `max_processes` handler
// processes (the worker's concurrency: a handler thread waits on each one busy). Each is the
// flowreg binary started once as `flowreg __handler-host` (posix_spawn: no fork of the worker's
// threads), which loads the plugin once and then runs one task at a time: warm, no exec or dlopen
// per task. Each leads a process group of its own, is a child subreaper, and dies with the worker:
// a thread of it watches the channel, and kills the whole group when the worker's end closes
// (SIGKILL of the worker included).
//
// The channel is a socketpair on the host's descriptor 3, carrying length-prefixed frames:
//   worker -> host   'N' the plugin's handler names, '\n'-joined (once, first)
//                    'T' u32 handler, u64 cpu limit (ms, 0: none), u32 context bytes, context,
//                        input
//   host -> worker   'Y' ready (the plugin loaded)   'E' message (it did not load; the host exits)
//                    'R' u8 status (0 ok, 1 retry, 2 permanent, 3 snooze), u64 CPU microseconds
//                        of the task, u64 peak RSS KiB of the process, u32 processes it left
//                        (killed), u64 microseconds the handler ran (wall clock), body
// The worker may write several 'T' frames at once (invoke_all); the host runs them in order and
// answers each as it ends, so that the worker knows which task a crash or a hang belongs to.
// A frame's length is read first and bounded (max_output_bytes and a little) before its bytes are.
// What the host writes to stdout and stderr reaches the worker through a pipe and its log, tagged
// with flow, run and task, at most log_bytes per task.
//
// What a task costs when its handler misbehaves (the task fails, retried as its options allow;
// the process is killed with its whole group and a fresh one replaces it on demand):
//   crash (a signal, exit, abort)     "... crashed its process (pid P, signal 11, SIGSEGV)"
//   timeout                           "... timed out after N ms; the handler process was killed"
//   CPU limit                         "... used its CPU time limit of N s (SIGXCPU)"
//   channel closed or garbage on it   "... broke its channel to the worker: ..."
//   output over max_output_bytes      fails for good, naming the limit (as under threads)
// A handler that forks: what it started is killed when the task ends (the host is a subreaper and
// kills its descendants); on a kill, the whole process group goes. A process that leaves the group
// (setsid) and whose parent is still alive escapes both: documented in docs/plugins.md.
//
// Thread-safety: invoke() and stats() may be called concurrently.

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/flow.hpp"
#include "flowreg/plugins.hpp"

namespace flowreg::detail {

struct HandlerProcessOptions {
  std::filesystem::path exe;     // the flowreg binary (`exe __handler-host ...`)
  std::filesystem::path plugin;  // the private copy the worker loaded
  std::string module;            // for messages
  std::vector<std::string> handler_names;
  HandlerLimits limits;
  int max_processes = 4;
  std::size_t max_output_bytes = std::size_t{16} << 20;
  std::chrono::milliseconds start_timeout{10'000};
  std::size_t log_bytes = 64 * 1024;  // handler output logged per task; the rest is counted
  // Called once (on a handler thread, no lock held) when its handlers crashed their processes
  // kCrashLoop times within kCrashWindow: the worker quarantines the plugin. Empty: nothing.
  std::function<void(const std::string& reason)> on_crash_loop;
};

// Crashes (a signal or an exit during a task; not timeouts, nor limits) of one pool that make a
// crash loop.
inline constexpr int kCrashLoop = 5;
inline constexpr std::chrono::milliseconds kCrashWindow{60'000};

// What a task's process did (for the log, metrics and messages).
struct ProcessFacts {
  pid_t pid = 0;
  std::uint64_t cpu_us = 0;          // CPU time of the task (user + system)
  std::uint64_t max_rss_kb = 0;      // peak resident set of the process so far
  int signal = 0;                    // the signal that ended it during the task
  int exit_status = -1;              // its exit status when it exited during the task
  std::uint32_t left_processes = 0;  // processes the handler started and left running (killed)
  std::uint64_t handler_us = 0;      // how long the handler ran, measured in its process
  bool killed = false;               // killed by the worker (timeout, protocol, output size)
};

// Where a task's output lines are logged from.
struct TaskTag {
  std::string flow, step, run_id;
  std::int64_t task_id = 0;
};

// One task of HandlerProcessPool::invoke_all. The views must outlive the call.
struct ProcessTask {
  std::uint32_t index = 0;  // the handler's
  std::string_view input, context;
  std::chrono::milliseconds timeout{0};
  TaskTag tag;
};

class HandlerProcessPool {
 public:
  explicit HandlerProcessPool(HandlerProcessOptions options);
  ~HandlerProcessPool();  // kills every process (its whole group) and reaps it
  HandlerProcessPool(const HandlerProcessPool&) = delete;
  HandlerProcessPool& operator=(const HandlerProcessPool&) = delete;

  const HandlerProcessOptions& options() const noexcept { return options_; }

  // Starts one process now (in the background of the caller's time), so that the first task finds
  // it warm. Errors are logged; the next invoke tries again.
  void prestart();

  // Runs handler `index` in one of the pool's processes, waiting for one to be free (at most
  // max_processes run at once). Never throws; never lets the handler's misbehaviour out.
  HandlerOutcome invoke(std::uint32_t index, std::string_view input, std::string_view context,
                        std::chrono::milliseconds timeout, const TaskTag& tag, ProcessFacts& facts);

  // Runs `tasks` in order in one of the pool's processes, all written to it at once: the process
  // goes from one task to the next without waiting for the worker, and the worker's thread wakes
  // once per reply it finds, not twice per task (a no-op task's cost was mostly those wake-ups).
  // Task i starts when task i - 1 ended (the first one now, the wait for a process included):
  // `starting(i)` is called then (may be empty), and `ended(i, outcome, facts)` when it ended, as
  // invoke() would return it; both in order, on the caller's thread. When a task costs its process
  // (a crash, its timeout, ...), the tasks written after it never started: they run in a fresh
  // process. So a task that hangs delays the ones behind it by its timeout: the caller sends only
  // tasks of a quick() pool, a few at a time. Never throws (but what the callbacks throw).
  using Starting = std::function<void(std::size_t)>;
  using Ended = std::function<void(std::size_t, HandlerOutcome, const ProcessFacts&)>;
  void invoke_all(std::span<const ProcessTask> tasks, const Starting& starting, const Ended& ended);

  // Its handlers have lately run within kQuickUs each: a moving average of their own times
  // (measured in the process; each counted at most 4 x kQuickUs, so that one preemption does not
  // count as a slow handler), a timeout counting as its length and a crash not at all. Its tasks
  // may then be written ahead (invoke_all). False before its first task.
  bool quick() const noexcept { return recent_us_.load(std::memory_order_relaxed) <= kQuickUs; }
  static constexpr std::uint32_t kQuickUs = 2'000;

  struct Stats {
    int alive = 0;                   // processes started and not ended
    int busy = 0;                    // running a task
    std::uint64_t started = 0;       // processes started, replacements included
    std::uint64_t crashed = 0;       // ended by a signal or exit during a task
    std::uint64_t timed_out = 0;     // killed at a task's timeout
    std::uint64_t killed_limit = 0;  // ended by a limit (CPU, memory: SIGXCPU, SIGKILL, ENOMEM)
    std::uint64_t broken = 0;        // killed for a broken channel or an output over the limit
  };
  Stats stats() const;

 private:
  struct Process;
  std::unique_ptr<Process> take(std::string& error);
  void put_back(std::unique_ptr<Process> p);
  // Ends a process taken and not misbehaving (its group killed, reaped), as if it had.
  void discard(std::unique_ptr<Process> p);
  // Kills `p`'s group, reaps it, and fills facts.signal/exit_status when it ended by itself.
  void end(std::unique_ptr<Process> p, ProcessFacts* facts);
  std::unique_ptr<Process> spawn(std::string& error);
  // A pids cgroup for one more process (limits.processes when running as root), or empty.
  std::filesystem::path pids_cgroup();

  const HandlerProcessOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // a process became idle, or room to start one
  // Waits for task `task`'s reply on `p` (its request may still be partly unsent: `request` from
  // `sent`), until `start` + its timeout: its outcome. `p` stays when the task ended with a result,
  // else the process was ended (null).
  HandlerOutcome await_result(std::unique_ptr<Process>& p, const std::string& request,
                              std::size_t& sent, const ProcessTask& task,
                              std::chrono::steady_clock::time_point start, ProcessFacts& facts);
  void note_time(std::chrono::steady_clock::duration took, bool timed_out = false) noexcept;

  std::vector<std::unique_ptr<Process>> idle_;
  std::atomic<std::uint32_t> recent_us_{~0u};  // see quick()
  int alive_ = 0, busy_ = 0;
  Stats counts_;
  bool warned_cgroup_ = false;
  std::vector<std::chrono::steady_clock::time_point> crashes_;  // within kCrashWindow
  bool crash_loop_ = false;                                     // on_crash_loop was called
};

// The pools of one worker, by plugin copy and limits: flows of one plugin with the same limits
// share processes. A pool lives as long as a flow's handlers hold it.
class HandlerProcessPools {
 public:
  HandlerProcessPools(std::filesystem::path exe, int max_processes, std::size_t max_output_bytes)
      : exe_(std::move(exe)), max_processes_(max_processes), max_output_bytes_(max_output_bytes) {}

  // `on_crash_loop`: for a pool made now (see HandlerProcessOptions).
  std::shared_ptr<HandlerProcessPool> get(
      const HandlerRef& handler, const HandlerLimits& limits,
      std::function<void(const std::string& reason)> on_crash_loop = {});
  // Every live pool's stats, summed.
  HandlerProcessPool::Stats stats() const;
  // Whether it has a live pool (a flow served runs its handlers in processes).
  bool any() const;

 private:
  const std::filesystem::path exe_;
  const int max_processes_;
  const std::size_t max_output_bytes_;
  mutable std::mutex mu_;
  std::map<std::string, std::weak_ptr<HandlerProcessPool>> pools_;
};

// The `flowreg __handler-host` side: loads the plugin named by argv and serves tasks on
// descriptor 3 until the worker closes it. Returns the process exit code.
int handler_host_main(int argc, char** argv);

// "SIGSEGV" for 11; "signal N" for one without a name.
std::string signal_name(int signal);

}  // namespace flowreg::detail
