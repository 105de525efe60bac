#include "worker/handler_process.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>

#include "metrics/metrics.hpp"
#include "plugin/plugin_library.hpp"
#include "util/process_tree.hpp"
#include "util/strings.hpp"

extern char** environ;

namespace flowreg::detail {

// At namespace scope, as flow_state.cpp and lanes.cpp have it (they may share a unity batch).
using Clock = std::chrono::steady_clock;

namespace {

using std::chrono::milliseconds;

constexpr int kChannelFd = 3;
// The host's exit status when it cannot write a task's result: its channel was closed or broken
// (by the handler: the worker's end is open).
constexpr int kExitChannelLost = 86;
// The largest frame the host accepts from the worker (a task's input and context).
constexpr std::uint32_t kMaxRequestBytes = 512u << 20;
// Bytes of a result frame besides the body: kind, status, CPU, RSS, processes left, handler time.
constexpr std::size_t kResultHeader = 1 + 1 + 8 + 8 + 4 + 8;

void put_u32(std::string& s, std::uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& s, std::uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }
std::uint32_t get_u32(const char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
std::uint64_t get_u64(const char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// `payload` with its length in front.
std::string framed(const std::string& payload) {
  std::string out;
  out.reserve(payload.size() + 4);
  put_u32(out, static_cast<std::uint32_t>(payload.size()));
  out += payload;
  return out;
}

// ---- The host side: blocking reads and writes on descriptor 3.

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// One frame's payload; false at the end of the channel or on a frame over `max`.
bool read_frame(int fd, std::string& payload, std::uint32_t max) {
  char header[4];
  if (!read_all(fd, header, 4)) return false;
  const std::uint32_t n = get_u32(header);
  if (n == 0 || n > max) return false;
  payload.resize(n);
  return read_all(fd, payload.data(), n);
}

// Frames read from a blocking descriptor through a buffer: the frames of tasks written ahead
// (HandlerProcessPool::invoke_all) arrive together and are read together.
class FrameReader {
 public:
  explicit FrameReader(int fd) : fd_(fd) {}
  // The next frame's payload; false at the end of the channel or on a frame over `max` (its
  // length is checked before its bytes are awaited).
  bool next(std::string& payload, std::uint32_t max) {
    if (!fill(4)) return false;
    const std::uint32_t n = get_u32(buf_.data() + at_);
    if (n == 0 || n > max) return false;
    if (!fill(4 + std::size_t{n})) return false;
    payload.assign(buf_, at_ + 4, n);
    at_ += 4 + std::size_t{n};
    return true;
  }

 private:
  // Until `n` bytes are buffered from at_ on; false at the end of the channel.
  bool fill(std::size_t n) {
    if (at_ == buf_.size()) {
      buf_.clear();
      if (buf_.capacity() > (std::size_t{1} << 20)) buf_.shrink_to_fit();  // a large one went
      at_ = 0;
    }
    while (buf_.size() - at_ < n) {
      if (at_ > 0) {
        buf_.erase(0, at_);
        at_ = 0;
      }
      constexpr std::size_t kChunk = 64 * 1024;
      const std::size_t missing = n - buf_.size();
      if (missing > kChunk) {  // a large frame: the rest of it, read in place
        const std::size_t had = buf_.size();
        buf_.resize(n);
        if (!read_all(fd_, buf_.data() + had, missing)) return false;
        continue;
      }
      char chunk[kChunk];
      const ssize_t r = ::read(fd_, chunk, sizeof chunk);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      buf_.append(chunk, static_cast<std::size_t>(r));
    }
    return true;
  }

  int fd_;
  std::string buf_;
  std::size_t at_ = 0;
};

bool write_frame(int fd, const std::string& payload) {
  const std::string f = framed(payload);
  return write_all(fd, f.data(), f.size());
}

std::uint64_t cpu_us_of(const rusage& u) {
  return static_cast<std::uint64_t>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1'000'000 +
         static_cast<std::uint64_t>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

void set_limit(int resource, rlim_t value) {
  rlimit l{value, value};
  if (::setrlimit(resource, &l) != 0) {
    // Lowering the soft limit alone is always allowed.
    rlimit current{};
    ::getrlimit(resource, &current);
    l = {std::min(value, current.rlim_max), current.rlim_max};
    ::setrlimit(resource, &l);
  }
}

// ---- The worker side.

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Handler processes of every pool of this process, for the metrics.
std::atomic<int> all_alive{0}, all_busy{0};

void count_alive(int delta) {
  metrics::handler_processes("alive").set(all_alive.fetch_add(delta) + delta);
}
void count_busy(int delta) {
  metrics::handler_processes("busy").set(all_busy.fetch_add(delta) + delta);
}

}  // namespace

std::string signal_name(int signal) {
  const char* abbrev = ::sigabbrev_np(signal);
  return abbrev ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", signal);
}

// ===================================================================== the host

int handler_host_main(int argc, char** argv) {
  // __handler-host FILE PARENT_PID MEMORY_MB OPEN_FILES PROCESSES CGROUP_PROCS ("-": none)
  if (argc != 8) {
    std::fprintf(stderr, "flowreg __handler-host: expected 6 arguments\n");
    return 2;
  }
  // A worker that died before this line is noticed by the parent pid; one that dies later, by the
  // watch below. (Not PR_SET_PDEATHSIG: it fires when the worker's thread that started this
  // process ends, not the worker.)
  if (::getppid() != static_cast<pid_t>(std::atoll(argv[3]))) return 0;
  ::signal(SIGPIPE, SIG_IGN);
  // Nothing of the worker's but the channel and the standard streams stays open here.
  ::close_range(kChannelFd + 1, ~0U, 0);
  become_subreaper();
  set_limit(RLIMIT_CORE, 0);
  if (const long long mb = std::atoll(argv[4]); mb > 0)
    set_limit(RLIMIT_AS, static_cast<rlim_t>(mb) << 20);
  if (const long long n = std::atoll(argv[5]); n > 0)
    set_limit(RLIMIT_NOFILE, static_cast<rlim_t>(n));
  if (const long long n = std::atoll(argv[6]); n > 0)
    set_limit(RLIMIT_NPROC, static_cast<rlim_t>(n));
  // The pids cgroup the worker made for this process (limits.processes under root, whom
  // RLIMIT_NPROC does not bound): joined before any plugin code runs, inherited by every fork.
  if (std::strcmp(argv[7], "-") != 0) {
    FILE* procs = std::fopen(argv[7], "w");
    const bool joined = procs && std::fprintf(procs, "%d\n", static_cast<int>(::getpid())) > 0 &&
                        std::fclose(procs) == 0;
    if (!joined) {
      write_frame(kChannelFd, std::string("Ecannot join the pids cgroup ") + argv[7] + ": " +
                                  std::strerror(errno));
      return 1;
    }
  }

  auto plugin = LoadedPlugin::open(argv[2]);
  if (!plugin) {
    write_frame(kChannelFd, "E" + plugin.error().message);
    return 1;
  }
  std::string frame;
  if (!read_frame(kChannelFd, frame, kMaxRequestBytes) || frame[0] != 'N') return 1;
  std::vector<std::string> names;
  for (std::size_t at = 1; at <= frame.size();) {
    const std::size_t nl = std::min(frame.find('\n', at), frame.size());
    names.push_back(frame.substr(at, nl - at));
    at = nl + 1;
  }
  (*plugin)->name_handlers(std::move(names));
  if (!write_frame(kChannelFd, "Y")) return 1;
  // The watch: when the worker's end of the channel closes (the worker died, SIGKILL included, or
  // gave this process up), this process's whole group goes, handler and what it forked with it.
  // Reading nothing, it does not compete with the reads of the tasks.
  std::thread([] {
    for (;;) {
      pollfd fd{kChannelFd, POLLRDHUP, 0};
      if (::poll(&fd, 1, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fd.revents & POLLNVAL) return;  // the handler closed the channel: no worker to watch
      if (fd.revents & (POLLRDHUP | POLLHUP | POLLERR)) ::kill(0, SIGKILL);
    }
  }).detach();

  rusage last_usage{};
  ::getrusage(RUSAGE_SELF, &last_usage);
  FrameReader tasks(kChannelFd);
  for (;;) {
    if (!tasks.next(frame, kMaxRequestBytes)) return 0;  // the worker closed it
    constexpr std::size_t kTaskHeader = 1 + 4 + 8 + 4;
    if (frame[0] != 'T' || frame.size() < kTaskHeader) return 1;
    const std::uint32_t index = get_u32(frame.data() + 1);
    const std::uint64_t cpu_ms = get_u64(frame.data() + 5);
    const std::uint32_t context_bytes = get_u32(frame.data() + 13);
    if (context_bytes > frame.size() - kTaskHeader) return 1;
    const std::string_view context(frame.data() + kTaskHeader, context_bytes);
    const std::string_view input(frame.data() + kTaskHeader + context_bytes,
                                 frame.size() - kTaskHeader - context_bytes);
    // This process runs no handler between tasks: what it used up to the end of the last task is
    // what it used before this one (a plugin's own threads aside).
    const rusage before = last_usage;
    if (cpu_ms > 0) {
      // A soft limit over what the process used so far (whole seconds, rounded up: the task gets
      // at least its share): SIGXCPU when this task used it.
      const std::uint64_t used_s = (cpu_us_of(before) + 999'999) / 1'000'000;
      const rlimit l{static_cast<rlim_t>(used_s + (cpu_ms + 999) / 1000), RLIM_INFINITY};
      ::setrlimit(RLIMIT_CPU, &l);
    }
    const auto entered = Clock::now();
    HandlerOutcome outcome = (*plugin)->invoke(index, input, context);
    const auto handler_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - entered).count();
    std::fflush(nullptr);  // what the handler printed goes out with its task
    // A subreaper without children has no descendant at all: the common case costs one waitid
    // (under a microsecond), not a listing of /proc (about 17 microseconds).
    siginfo_t child{};
    const bool has_children =
        ::waitid(P_ALL, 0, &child, WEXITED | WNOHANG | WNOWAIT) == 0 || errno != ECHILD;
    const int left = has_children ? kill_descendants(Clock::now() + milliseconds(1'000)) : 0;
    rusage after{};
    ::getrusage(RUSAGE_SELF, &after);
    last_usage = after;
    std::string reply;
    reply.reserve(kResultHeader + outcome.body.size());
    reply += 'R';
    reply += static_cast<char>(outcome.status == HandlerOutcome::Status::ok       ? 0
                               : outcome.status == HandlerOutcome::Status::retry  ? 1
                               : outcome.status == HandlerOutcome::Status::snooze ? 3
                                                                                  : 2);
    put_u64(reply, cpu_us_of(after) - cpu_us_of(before));
    put_u64(reply, static_cast<std::uint64_t>(after.ru_maxrss));
    put_u32(reply, static_cast<std::uint32_t>(std::max(left, 0)));
    put_u64(reply, static_cast<std::uint64_t>(handler_us));
    reply += outcome.body;
    if (!write_frame(kChannelFd, reply)) return kExitChannelLost;
  }
}

// ===================================================================== the worker side

struct HandlerProcessPool::Process {
  pid_t pid = 0;
  int channel = -1;           // our end of the socketpair (non-blocking)
  int output = -1;            // the read end of its stdout and stderr (non-blocking)
  bool output_ended = false;  // it closed its stdout and stderr: no more polling them
  std::string inbox;          // bytes read from the channel and not yet taken as a reply
  bool reaped = false;
  int status = 0;                // when reaped
  rusage usage{};                // its whole life's, when reaped
  std::filesystem::path cgroup;  // its pids cgroup (limits.processes under root); empty: none

  ~Process() {
    if (channel >= 0) ::close(channel);
    if (output >= 0) ::close(output);
  }
};

HandlerProcessPool::HandlerProcessPool(HandlerProcessOptions options)
    : options_(std::move(options)) {}

HandlerProcessPool::~HandlerProcessPool() {
  std::vector<std::unique_ptr<Process>> idle;
  {
    std::lock_guard lock(mu_);
    idle.swap(idle_);
  }
  for (auto& p : idle) end(std::move(p), nullptr);
}

HandlerProcessPool::Stats HandlerProcessPool::stats() const {
  std::lock_guard lock(mu_);
  Stats s = counts_;
  s.alive = alive_;
  s.busy = busy_;
  return s;
}

namespace {

// The pids hierarchy of cgroup v1 where this process may make cgroups, or empty.
const std::filesystem::path& pids_hierarchy() {
  static const std::filesystem::path root = [] {
    const std::filesystem::path v1 = "/sys/fs/cgroup/pids";
    std::error_code ec;
    if (!std::filesystem::exists(v1 / "cgroup.procs", ec) || ::access(v1.c_str(), W_OK) != 0)
      return std::filesystem::path();
    // The cgroups of workers that died without removing theirs (SIGKILL): empty once their
    // processes ended, removed here. A cgroup is named <worker pid>-<n>.
    for (const auto& entry : std::filesystem::directory_iterator(v1 / "flowreg", ec)) {
      const std::string name = entry.path().filename().string();
      const long pid = std::atol(name.c_str());
      if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
        ::rmdir(entry.path().c_str());
    }
    return v1;
  }();
  return root;
}

void remove_cgroup(const std::filesystem::path& dir) {
  // What is still in it left the process group (setsid): the cgroup holds it all the same.
  for (int round = 0; round < 10; ++round) {
    std::ifstream procs(dir / "cgroup.procs");
    bool any = false;
    for (long pid = 0; procs >> pid;)
      if (pid > 1) any = ::kill(static_cast<pid_t>(pid), SIGKILL) == 0 || any;
    if (!any) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  // Empty once its last process was reaped; the kernel may take a moment to see it so.
  for (int i = 0; i < 100; ++i) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return;
    std::this_thread::sleep_for(milliseconds(10));
  }
  spdlog::warn("handler processes: cannot remove the pids cgroup {}: {}", dir.string(),
               std::strerror(errno));
}

}  // namespace

std::filesystem::path HandlerProcessPool::pids_cgroup() {
  // RLIMIT_NPROC bounds the processes of a user other than root; root's are bounded by a pids
  // cgroup of the process's own, where the worker may make one.
  if (options_.limits.processes <= 0 || ::geteuid() != 0) return {};
  std::error_code ec;
  if (!pids_hierarchy().empty()) {
    static std::atomic<unsigned> next{0};
    const auto dir = pids_hierarchy() / "flowreg" / fmt::format("{}-{}", ::getpid(), ++next);
    std::filesystem::create_directories(dir, ec);
    if (!ec) {
      std::ofstream(dir / "pids.max") << options_.limits.processes << "\n";
      std::ifstream check(dir / "pids.max");
      long long max = 0;
      if (check >> max && max == options_.limits.processes) return dir;
      remove_cgroup(dir);
    }
  }
  std::lock_guard lock(mu_);
  if (!warned_cgroup_) {
    warned_cgroup_ = true;
    spdlog::warn(
        "handler processes of {}: limits.processes ({}) is not enforced: the worker runs as root, "
        "whom RLIMIT_NPROC does not bound, and it cannot make a pids cgroup (cgroup v1 at "
        "/sys/fs/cgroup/pids){}",
        options_.module, options_.limits.processes, ec ? ": " + ec.message() : "");
  }
  return {};
}

std::unique_ptr<HandlerProcessPool::Process> HandlerProcessPool::spawn(std::string& error) {
  int channel[2], output[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel) != 0) {
    error = fmt::format("socketpair: {}", std::strerror(errno));
    return nullptr;
  }
  if (::pipe2(output, O_CLOEXEC) != 0) {
    error = fmt::format("pipe: {}", std::strerror(errno));
    ::close(channel[0]);
    ::close(channel[1]);
    return nullptr;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, output[1], 1);
  posix_spawn_file_actions_adddup2(&actions, output[1], 2);
  posix_spawn_file_actions_adddup2(&actions, channel[1], kChannelFd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);  // the worker blocks SIGTERM and SIGINT
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);  // a process group of its own, killed as a whole
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  const std::string exe = options_.exe.string(), plugin = options_.plugin.string(),
                    parent = std::to_string(::getpid()),
                    memory = std::to_string(options_.limits.memory_mb),
                    files = std::to_string(options_.limits.open_files),
                    procs = std::to_string(options_.limits.processes);
  const std::filesystem::path cgroup = pids_cgroup();
  const std::string cgroup_procs = cgroup.empty() ? "-" : (cgroup / "cgroup.procs").string();
  std::vector<char*> argv = {const_cast<char*>(exe.c_str()),
                             const_cast<char*>("__handler-host"),
                             const_cast<char*>(plugin.c_str()),
                             const_cast<char*>(parent.c_str()),
                             const_cast<char*>(memory.c_str()),
                             const_cast<char*>(files.c_str()),
                             const_cast<char*>(procs.c_str()),
                             const_cast<char*>(cgroup_procs.c_str()),
                             nullptr};
  pid_t pid = 0;
  const int spawned = ::posix_spawn(&pid, exe.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(channel[1]);
  ::close(output[1]);
  auto p = std::make_unique<Process>();
  p->channel = channel[0];
  p->output = output[0];
  p->cgroup = cgroup;
  if (spawned != 0) {
    error = fmt::format("cannot start {}: {}", exe, std::strerror(spawned));
    if (!cgroup.empty()) remove_cgroup(cgroup);
    p->reaped = true;
    return nullptr;
  }
  p->pid = pid;
  set_nonblocking(p->channel);
  set_nonblocking(p->output);
  {
    std::lock_guard lock(mu_);
    ++counts_.started;
  }
  metrics::handler_processes_started().inc();
  return p;
}

void HandlerProcessPool::end(std::unique_ptr<Process> p, ProcessFacts* facts) {
  if (!p) return;
  if (p->pid > 0 && !p->reaped) {
    ::kill(-p->pid, SIGKILL);
    int status = 0;
    while (::wait4(p->pid, &status, 0, &p->usage) < 0 && errno == EINTR) {
    }
    p->reaped = true;
    p->status = status;
  }
  // What it started and left in its group goes with it.
  if (p->pid > 0) kill_group_and_wait(p->pid, Clock::now() + milliseconds(2'000));
  if (!p->cgroup.empty()) remove_cgroup(p->cgroup);
  if (facts && !facts->killed) {
    if (WIFSIGNALED(p->status)) facts->signal = WTERMSIG(p->status);
    if (WIFEXITED(p->status)) facts->exit_status = WEXITSTATUS(p->status);
  }
  if (facts && p->reaped) {
    // Of the process's whole life (its last task's share cannot be told apart).
    facts->cpu_us = cpu_us_of(p->usage);
    facts->max_rss_kb = static_cast<std::uint64_t>(p->usage.ru_maxrss);
  }
  std::lock_guard lock(mu_);
  --alive_;
  count_alive(-1);
  cv_.notify_all();
}

namespace {

// Reads what is there of a process's output: kept up to `room`, the rest counted in `dropped`.
// Sets `ended` at its end (the process closed both streams, or died).
void drain_output(int fd, std::string& kept, std::size_t room, std::size_t& dropped, bool& ended) {
  char buffer[16 * 1024];
  while (!ended) {
    const ssize_t r = ::read(fd, buffer, sizeof buffer);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) ended = true;
    if (r <= 0) return;
    const std::size_t n = static_cast<std::size_t>(r);
    const std::size_t take = kept.size() < room ? std::min(n, room - kept.size()) : 0;
    kept.append(buffer, take);
    dropped += n - take;
  }
}

void log_output(const std::string& kept, std::size_t dropped, const TaskTag& tag, pid_t pid) {
  if (kept.empty() && dropped == 0) return;
  std::size_t at = 0;
  while (at < kept.size()) {
    std::size_t nl = kept.find('\n', at);
    if (nl == std::string::npos) nl = kept.size();
    spdlog::info("handler output [flow {} step {} run {} task {} pid {}]: {}", tag.flow, tag.step,
                 tag.run_id, tag.task_id, pid, utf8_valid(kept.substr(at, nl - at)));
    at = nl + 1;
  }
  if (dropped > 0)
    spdlog::warn(
        "handler output [flow {} step {} run {} task {} pid {}]: {} more bytes dropped "
        "(the log keeps {} bytes per task)",
        tag.flow, tag.step, tag.run_id, tag.task_id, pid, dropped, kept.size());
}

}  // namespace

std::unique_ptr<HandlerProcessPool::Process> HandlerProcessPool::take(std::string& error) {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !idle_.empty() || alive_ < options_.max_processes; });
    if (!idle_.empty()) {
      auto p = std::move(idle_.back());
      idle_.pop_back();
      ++busy_;
      count_busy(1);
      return p;
    }
    ++alive_;  // room reserved for the one started below
    ++busy_;
    count_alive(1);
    count_busy(1);
  }
  auto p = spawn(error);
  // Its 'N' frame, then its 'Y' once the plugin loaded.
  std::string names;
  for (const auto& n : options_.handler_names) {
    if (!names.empty()) names += '\n';
    names += n;
  }
  std::string problem;
  if (p) {
    const std::string f = framed("N" + names);
    std::size_t sent = 0;
    std::string got;
    const auto deadline = Clock::now() + options_.start_timeout;
    std::string kept;
    std::size_t dropped = 0;
    while (problem.empty()) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        problem =
            fmt::format("it did not load the plugin within {} ms", options_.start_timeout.count());
        break;
      }
      pollfd fds[2] = {{p->channel, static_cast<short>(sent < f.size() ? POLLOUT : POLLIN), 0},
                       {p->output_ended ? -1 : p->output, POLLIN, 0}};
      if (::poll(fds, 2, static_cast<int>(left)) < 0 && errno != EINTR) {
        problem = std::strerror(errno);
        break;
      }
      if (fds[1].revents)
        drain_output(p->output, kept, options_.log_bytes, dropped, p->output_ended);
      if (sent < f.size() && (fds[0].revents & POLLOUT)) {
        const ssize_t w = ::send(p->channel, f.data() + sent, f.size() - sent, MSG_NOSIGNAL);
        if (w > 0)
          sent += static_cast<std::size_t>(w);
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
          problem = "its channel closed";
        continue;
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buffer[4096];
        const ssize_t r = ::read(p->channel, buffer, sizeof buffer);
        if (r == 0) {
          problem = "it ended before it was ready";
        } else if (r > 0) {
          got.append(buffer, static_cast<std::size_t>(r));
          if (got.size() > 4 + 64 * 1024) problem = "it sent too much before it was ready";
          if (got.size() >= 4 && got.size() >= 4 + get_u32(got.data())) {
            const std::string payload = got.substr(4, get_u32(got.data()));
            if (payload == "Y") break;
            problem = payload.starts_with("E") ? utf8_valid(payload.substr(1))
                                               : "it answered something other than ready";
          }
        }
      }
    }
    if (!kept.empty() || dropped > 0)
      log_output(kept, dropped, TaskTag{options_.module, "(start)", "", 0}, p->pid);
    if (problem.empty()) return p;
  }
  ProcessFacts facts;
  const pid_t pid = p ? p->pid : 0;
  if (p) {
    end(std::move(p), &facts);
  } else {
    std::lock_guard lock(mu_);
    --alive_;
    count_alive(-1);
    cv_.notify_all();
  }
  {
    std::lock_guard lock(mu_);
    --busy_;
    count_busy(-1);
  }
  if (error.empty())
    error = fmt::format("the handler process (pid {}) for {} did not start: {}{}", pid,
                        options_.plugin.filename().string(), problem,
                        facts.signal ? fmt::format(" ({})", signal_name(facts.signal)) : "");
  return nullptr;
}

void HandlerProcessPool::put_back(std::unique_ptr<Process> p) {
  std::lock_guard lock(mu_);
  --busy_;
  count_busy(-1);
  idle_.push_back(std::move(p));
  cv_.notify_one();
}

void HandlerProcessPool::discard(std::unique_ptr<Process> p) {
  end(std::move(p), nullptr);
  std::lock_guard lock(mu_);
  --busy_;
  count_busy(-1);
}

void HandlerProcessPool::prestart() {
  std::string error;
  auto p = take(error);
  if (!p) {
    spdlog::warn("handler processes of {}: {}", options_.module, error);
    return;
  }
  put_back(std::move(p));
}

namespace {

// A task's request frame, appended to `out`.
void append_request(std::string& out, const ProcessTask& task, std::uint64_t cpu_ms) {
  const std::size_t n = 17 + task.context.size() + task.input.size();
  put_u32(out, static_cast<std::uint32_t>(n));
  out += 'T';
  put_u32(out, task.index);
  put_u64(out, cpu_ms);
  put_u32(out, static_cast<std::uint32_t>(task.context.size()));
  out.append(task.context);
  out.append(task.input);
}

}  // namespace

HandlerOutcome HandlerProcessPool::invoke(std::uint32_t index, std::string_view input,
                                          std::string_view context, milliseconds timeout,
                                          const TaskTag& tag, ProcessFacts& facts) {
  const ProcessTask task{index, input, context, timeout, tag};
  HandlerOutcome result;
  invoke_all(std::span(&task, 1), {},
             [&](std::size_t, HandlerOutcome outcome, const ProcessFacts& got) {
               result = std::move(outcome);
               facts = got;
             });
  return result;
}

void HandlerProcessPool::note_time(Clock::duration took, bool timed_out) noexcept {
  // A handler's time counts at most 4 x kQuickUs: a quick handler that a busy machine preempted
  // once does not make its pool slow (it takes three such in a row), one that takes longer every
  // time does. A timeout counts whole: the pool is not quick for a while.
  const auto us = static_cast<std::uint32_t>(
      std::min<long long>(std::chrono::duration_cast<std::chrono::microseconds>(took).count(),
                          timed_out ? 1'000'000'000 : 4 * kQuickUs));
  const std::uint32_t old = recent_us_.load(std::memory_order_relaxed);
  // Racy by design (threads of the pool update it at once): an estimate.
  recent_us_.store(old == ~0u ? us : static_cast<std::uint32_t>((old * 7ULL + us) / 8),
                   std::memory_order_relaxed);
}

void HandlerProcessPool::invoke_all(std::span<const ProcessTask> tasks, const Starting& starting,
                                    const Ended& ended) {
  const std::uint64_t cpu_ms = static_cast<std::uint64_t>(options_.limits.cpu.count());
  std::size_t next = 0;
  while (next < tasks.size()) {
    // The first task's time counts from here, the wait for a process included.
    auto start = Clock::now();
    if (starting) starting(next);
    std::string error;
    auto p = take(error);
    // A callback that throws leaves the process with tasks written to it and not answered: it
    // goes (a process put back so would answer the next task with an earlier one's result).
    struct Discard {
      HandlerProcessPool* pool;
      std::unique_ptr<Process>* p;
      ~Discard() {
        if (*p) pool->discard(std::move(*p));
      }
    } discard_on_throw{this, &p};
    if (!p) {
      for (std::size_t i = next; i < tasks.size(); ++i) {
        if (i > next && starting) starting(i);
        ended(i, {HandlerOutcome::Status::retry, error}, ProcessFacts{});
      }
      return;
    }
    std::string request;
    std::size_t bytes = 0;
    for (std::size_t i = next; i < tasks.size(); ++i)
      bytes += 4 + 17 + tasks[i].context.size() + tasks[i].input.size();
    request.reserve(bytes);
    for (std::size_t i = next; i < tasks.size(); ++i) append_request(request, tasks[i], cpu_ms);
    if (tasks.size() - next > 1)
      spdlog::debug("handler process {}: {} tasks written to it at once", p->pid,
                    tasks.size() - next);
    std::size_t sent = 0;
    // The requests go out at once when the socket takes them whole (nearly always): no poll first.
    if (const ssize_t w = ::send(p->channel, request.data(), request.size(), MSG_NOSIGNAL); w > 0)
      sent = static_cast<std::size_t>(w);
    for (std::size_t i = next; i < tasks.size(); ++i) {
      if (i > next) {
        start = Clock::now();
        if (starting) starting(i);
      }
      ProcessFacts facts;
      facts.pid = p->pid;
      HandlerOutcome outcome = await_result(p, request, sent, tasks[i], start, facts);
      ended(i, std::move(outcome), facts);
      if (!p) {  // the process went: the tasks after this one never started
        next = i + 1;
        break;
      }
      if (i + 1 == tasks.size()) {
        put_back(std::move(p));
        return;
      }
    }
  }
}

HandlerOutcome HandlerProcessPool::await_result(std::unique_ptr<Process>& p,
                                                const std::string& request, std::size_t& sent,
                                                const ProcessTask& task, Clock::time_point start,
                                                ProcessFacts& facts) {
  const milliseconds timeout = task.timeout;
  const TaskTag& tag = task.tag;
  const std::string handler = task.index < options_.handler_names.size()
                                  ? fmt::format("handler '{}'", options_.handler_names[task.index])
                                  : fmt::format("handler {}", task.index);
  // The deadline counts from the task's start (for the first one on a process, the wait for it
  // included).
  const auto deadline = start + timeout;
  const std::size_t max_frame = options_.max_output_bytes + kResultHeader;
  std::string got;  // the reply frame as it arrives
  std::string kept;
  std::size_t dropped = 0;
  enum class End { result, timed_out, closed, broken } how = End::result;
  std::string broken_why;
  bool complete = false;
  // Takes the reply from what has arrived, reading what the socket has (several replies at once
  // when tasks were written ahead); a reply's length is checked before more than a chunk of it is
  // read. False when the reply cannot be read any further (`how` says why); true with `complete`
  // set, or when more must be awaited.
  const auto read_reply = [&]() -> bool {
    std::string& in = p->inbox;
    for (;;) {
      if (in.size() >= 4) {
        const std::uint32_t n = get_u32(in.data());
        if (n > max_frame) {
          how = End::broken;
          broken_why = fmt::format(
              "it sent a result of {} bytes, over the limit of {} bytes of output "
              "(worker.max_output_bytes, --max-output)",
              n, options_.max_output_bytes);
          return false;
        }
        if (n < kResultHeader) {
          how = End::broken;
          broken_why = fmt::format("it sent a frame of {} bytes, too short for a result", n);
          return false;
        }
        if (in.size() >= 4 + std::size_t{n}) {
          if (in.size() == 4 + std::size_t{n}) {
            got.swap(in);
            in.clear();
          } else {
            got.assign(in, 0, 4 + std::size_t{n});
            in.erase(0, 4 + std::size_t{n});
            // What a large reply reserved is not kept for the small ones after it.
            if (in.capacity() > (std::size_t{1} << 20) && in.size() < (std::size_t{1} << 16))
              in.shrink_to_fit();
          }
          complete = true;
          return true;
        }
        in.reserve(4 + std::size_t{n});
      }
      char buffer[64 * 1024];
      const ssize_t r = ::read(p->channel, buffer, sizeof buffer);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EAGAIN) return true;
      if (r <= 0) {
        how = End::closed;
        return false;
      }
      in.append(buffer, static_cast<std::size_t>(r));
    }
  };
  // What came with an earlier reply may hold this one whole: then no poll.
  bool readable = p->inbox.empty() || read_reply();
  while (readable && !complete) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      how = End::timed_out;
      break;
    }
    pollfd fds[2] = {
        {p->channel, static_cast<short>(POLLIN | (sent < request.size() ? POLLOUT : 0)), 0},
        {p->output_ended ? -1 : p->output, POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(std::min<long long>(left, 1'000'000))) < 0) {
      if (errno == EINTR) continue;
      how = End::broken;
      broken_why = std::strerror(errno);
      break;
    }
    if (fds[1].revents) drain_output(p->output, kept, options_.log_bytes, dropped, p->output_ended);
    if (sent < request.size() && (fds[0].revents & POLLOUT)) {
      const ssize_t w =
          ::send(p->channel, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (w > 0) sent += static_cast<std::size_t>(w);
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) && !read_reply()) readable = false;
  }
  // Status 0 ok, 1 retry, 2 permanent, 3 snooze.
  if (how == End::result && (got[4] != 'R' || static_cast<unsigned char>(got[5]) > 3)) {
    how = End::broken;
    broken_why = "it sent a frame that is not a result";
  }
  drain_output(p->output, kept, options_.log_bytes, dropped, p->output_ended);

  if (how == End::result) {
    facts.cpu_us = get_u64(got.data() + 6);
    facts.max_rss_kb = get_u64(got.data() + 14);
    facts.left_processes = get_u32(got.data() + 22);
    facts.handler_us = get_u64(got.data() + 26);
    note_time(std::chrono::microseconds(facts.handler_us));
    log_output(kept, dropped, tag, p->pid);
    if (facts.left_processes > 0)
      spdlog::warn(
          "worker: {} of flow {} run {} task {} left {} process(es) running; they were "
          "killed",
          handler, tag.flow, tag.run_id, tag.task_id, facts.left_processes);
    const auto status = static_cast<unsigned char>(got[5]);
    HandlerOutcome outcome{status == 0   ? HandlerOutcome::Status::ok
                           : status == 1 ? HandlerOutcome::Status::retry
                           : status == 3 ? HandlerOutcome::Status::snooze
                                         : HandlerOutcome::Status::permanent,
                           got.substr(4 + kResultHeader)};
    if (outcome.status == HandlerOutcome::Status::snooze) return outcome;
    if (outcome.status != HandlerOutcome::Status::ok && options_.limits.memory_mb > 0 &&
        outcome.body.find("bad_alloc") != std::string::npos)
      outcome.body += fmt::format(" (its process may use {} MiB of memory: limits.memory_mb)",
                                  options_.limits.memory_mb);
    // Where and with what it ran, for people reading the error (runs show, the dashboard); a
    // completion's facts go to the metrics and the debug log.
    if (outcome.status != HandlerOutcome::Status::ok)
      outcome.body +=
          fmt::format(" [handler process {}: {:.3f} s of CPU, peak RSS {} MiB]", facts.pid,
                      static_cast<double>(facts.cpu_us) / 1e6, (facts.max_rss_kb + 1023) / 1024);
    else
      spdlog::debug(
          "handler process {} ran task {} of flow {} run {}: {:.3f} s of CPU, peak RSS "
          "{} MiB",
          facts.pid, tag.task_id, tag.flow, tag.run_id, static_cast<double>(facts.cpu_us) / 1e6,
          (facts.max_rss_kb + 1023) / 1024);
    return outcome;
  }

  // The process misbehaved: it goes, with everything in its group.
  if (how == End::closed) {
    // It ended (a crash, exit), or closed its channel and lives on: give it a moment to end.
    const auto until = Clock::now() + milliseconds(200);
    while (Clock::now() < until) {
      int status = 0;
      const pid_t w = ::wait4(p->pid, &status, WNOHANG, &p->usage);
      if (w == p->pid) {
        p->reaped = true;
        p->status = status;
        break;
      }
      std::this_thread::sleep_for(milliseconds(2));
    }
  }
  facts.killed = !p->reaped;
  const pid_t pid = p->pid;
  drain_output(p->output, kept, options_.log_bytes, dropped, p->output_ended);
  log_output(kept, dropped, tag, pid);
  end(std::move(p), &facts);
  {
    std::lock_guard lock(mu_);
    --busy_;
    count_busy(-1);
  }
  std::string why;
  HandlerOutcome::Status status = HandlerOutcome::Status::retry;
  {
    std::lock_guard lock(mu_);
    switch (how) {
      case End::timed_out:
        note_time(timeout, /*timed_out=*/true);  // not quick, for a while (quick())
        ++counts_.timed_out;
        metrics::handler_process_ends("timed_out").inc();
        why = fmt::format("{} timed out after {} ms; the handler process (pid {}) was killed",
                          handler, timeout.count(), pid);
        break;
      case End::broken:
        ++counts_.broken;
        metrics::handler_process_ends("broken").inc();
        why = fmt::format(
            "{} broke its channel to the worker: {}; the handler process (pid {}) "
            "was killed",
            handler, broken_why, pid);
        if (broken_why.find("max_output_bytes") != std::string::npos)
          status = HandlerOutcome::Status::permanent;
        break;
      case End::closed:
      case End::result:
        if (facts.signal == SIGXCPU) {
          ++counts_.killed_limit;
          metrics::handler_process_ends("limit").inc();
          why = fmt::format(
              "{} used its CPU time limit of {} s (limits.cpu): its process (pid "
              "{}) got {}",
              handler, (options_.limits.cpu.count() + 999) / 1000, pid, signal_name(SIGXCPU));
        } else if (facts.signal != 0) {
          ++(facts.signal == SIGKILL ? counts_.killed_limit : counts_.crashed);
          metrics::handler_process_ends(facts.signal == SIGKILL ? "limit" : "crashed").inc();
          why = fmt::format("{} crashed its process (pid {}, signal {}, {}){}", handler, pid,
                            facts.signal, signal_name(facts.signal),
                            facts.signal == SIGKILL
                                ? " : killed from outside, by the out-of-memory killer or a person"
                                : "");
        } else if (facts.exit_status == kExitChannelLost) {
          ++counts_.broken;
          metrics::handler_process_ends("broken").inc();
          why = fmt::format(
              "{} closed or broke its result channel (descriptor 3) in its process "
              "(pid {}), which could not send the result",
              handler, pid);
        } else if (facts.exit_status >= 0) {
          ++counts_.crashed;
          metrics::handler_process_ends("crashed").inc();
          why = fmt::format("{} ended its process (pid {}) with exit status {} during the task",
                            handler, pid, facts.exit_status);
        } else {
          ++counts_.broken;
          metrics::handler_process_ends("broken").inc();
          why = fmt::format(
              "{} closed its channel to the worker; the handler process (pid {}) "
              "was killed",
              handler, pid);
        }
        break;
    }
  }
  // A crash loop: the plugin is quarantined (once).
  if (how == End::closed && facts.signal != SIGXCPU && facts.signal != SIGKILL &&
      (facts.signal != 0 || facts.exit_status >= 0) && facts.exit_status != kExitChannelLost) {
    std::string loop;
    {
      std::lock_guard lock(mu_);
      const auto now = Clock::now();
      std::erase_if(crashes_, [&](auto at) { return now - at > kCrashWindow; });
      crashes_.push_back(now);
      if (!crash_loop_ && static_cast<int>(crashes_.size()) >= kCrashLoop) {
        crash_loop_ = true;
        loop = fmt::format(
            "its handlers crashed their processes {} times within {} s at run time (isolation: "
            "process); the last: {}",
            crashes_.size(), kCrashWindow.count() / 1000, why);
      }
    }
    if (!loop.empty() && options_.on_crash_loop) options_.on_crash_loop(loop);
  }
  // What the process had used, for people reading the error (runs show, the dashboard).
  why += fmt::format(" [its process used {:.3f} s of CPU, peak RSS {} MiB]",
                     static_cast<double>(facts.cpu_us) / 1e6, (facts.max_rss_kb + 1023) / 1024);
  return {status, std::move(why)};
}

// ===================================================================== the pools

std::shared_ptr<HandlerProcessPool> HandlerProcessPools::get(
    const HandlerRef& handler, const HandlerLimits& limits,
    std::function<void(const std::string& reason)> on_crash_loop) {
  const std::string key =
      fmt::format("{}|{}|{}|{}|{}", handler.code_file().string(), limits.memory_mb,
                  limits.cpu.count(), limits.open_files, limits.processes);
  std::lock_guard lock(mu_);
  std::erase_if(pools_, [](const auto& entry) { return entry.second.expired(); });
  if (auto it = pools_.find(key); it != pools_.end())
    if (auto pool = it->second.lock()) return pool;
  HandlerProcessOptions o;
  o.exe = exe_;
  o.plugin = handler.code_file();
  const std::string& name = handler.name();
  o.module = name.substr(0, name.find('.'));
  o.handler_names = handler.plugin_handler_names();
  o.limits = limits;
  o.max_processes = max_processes_;
  o.max_output_bytes = max_output_bytes_;
  o.on_crash_loop = std::move(on_crash_loop);
  auto pool = std::make_shared<HandlerProcessPool>(std::move(o));
  pools_[key] = pool;
  return pool;
}

bool HandlerProcessPools::any() const {
  std::lock_guard lock(mu_);
  return std::any_of(pools_.begin(), pools_.end(),
                     [](const auto& entry) { return !entry.second.expired(); });
}

HandlerProcessPool::Stats HandlerProcessPools::stats() const {
  HandlerProcessPool::Stats sum;
  std::vector<std::shared_ptr<HandlerProcessPool>> live;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, weak] : pools_)
      if (auto pool = weak.lock()) live.push_back(std::move(pool));
  }
  for (const auto& pool : live) {
    const auto s = pool->stats();
    sum.alive += s.alive;
    sum.busy += s.busy;
    sum.started += s.started;
    sum.crashed += s.crashed;
    sum.timed_out += s.timed_out;
    sum.killed_limit += s.killed_limit;
    sum.broken += s.broken;
  }
  return sum;
}

}  // namespace flowreg::detail
