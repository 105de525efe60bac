#include "plugin/directory_watcher.hpp"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>

namespace flowreg::detail {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr std::uint32_t kWatchMask = IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
                                     IN_DELETE | IN_ATTRIB | IN_MODIFY | IN_DELETE_SELF |
                                     IN_MOVE_SELF | IN_ONLYDIR;

std::string errno_text(int err) { return std::generic_category().message(err); }

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// lstat() without opening: the signature of a regular file or of a symlink itself; nullopt for
// anything else (absent, directory, FIFO, socket, device).
std::optional<FileSignature> look(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return std::nullopt;
  if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) return std::nullopt;
  FileSignature sig;
  sig.size = static_cast<std::uintmax_t>(st.st_size);
  sig.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
                 static_cast<std::int64_t>(st.st_mtim.tv_nsec);
  sig.inode = static_cast<std::uint64_t>(st.st_ino);
  sig.mode = static_cast<std::uint32_t>(st.st_mode);
  sig.uid = static_cast<std::uint32_t>(st.st_uid);
  return sig;
}

bool accepts(const WatchOptions& options, const fs::path& name) {
  return options.filter ? options.filter(name) : default_watch_filter(name);
}

// Every matching name in `dir` that is a regular file or a symlink, with its signature. An absent
// directory is empty; any other failure to list it is an error (a rescan must not then conclude
// that every file was removed).
Result<std::map<std::string, FileSignature>> list_directory(const fs::path& dir,
                                                            const WatchOptions& options) {
  std::map<std::string, FileSignature> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory || ec == std::errc::not_a_directory) return out;
    return make_error(Errc::io, "cannot list directory '" + dir.string() + "': " + ec.message());
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const fs::path name = it->path().filename();
    if (!accepts(options, name)) continue;
    if (auto sig = look(dir / name)) out.emplace(name.string(), *sig);
  }
  if (ec) {
    return make_error(Errc::io, "cannot list directory '" + dir.string() + "': " + ec.message());
  }
  return out;
}

}  // namespace

bool default_watch_filter(const fs::path& name) {
  const std::string s = name.string();
  if (s.empty() || s.front() == '.' || s.find('/') != std::string::npos) return false;
  if (!ends_with(s, ".so")) return false;
  for (std::string_view bad : {"~", ".tmp", ".part", ".swp"}) {
    if (ends_with(s, bad)) return false;
  }
  return true;
}

std::vector<FileChange> scan_directory(const fs::path& dir, const WatchOptions& options) {
  std::vector<FileChange> out;
  auto listed = list_directory(dir, options);
  if (!listed) return out;
  for (const auto& [name, sig] : *listed) {
    out.push_back(FileChange{FileChange::Kind::present, dir / name, sig});
  }
  return out;  // sorted: std::map orders by name
}

// The watcher thread's state. Touched only by start() before the thread exists, then only by the
// thread (thread creation orders the two), then by the destructor after the join.
struct DirectoryWatcher::State {
  // One name waiting to settle. `looked`: the first look after the quiet period was taken and
  // gave `seen`; the name settles when a second look at `due` gives the same.
  struct Pending {
    Clock::time_point due;
    bool looked = false;
    std::optional<FileSignature> seen;
  };

  int inotify_fd = -1;
  int wd = -1;                                    // -1 while the directory's watch is lost
  std::map<std::string, FileSignature> reported;  // what the callback was last told is present
  std::map<std::string, Pending> pending;
  std::set<std::string> rescan_wait;  // names that the running rescans wait for
  std::uint64_t rescans_in_flight = 0;
  bool initial_pending = true;  // the initial batch has not been delivered yet
  Clock::time_point initial_due;
  Clock::time_point next_rescan;
};

DirectoryWatcher::DirectoryWatcher(fs::path dir, WatchOptions options, Callback callback)
    : dir_(std::move(dir)),
      options_(std::move(options)),
      callback_(std::move(callback)),
      state_(std::make_unique<State>()),
      wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

DirectoryWatcher::~DirectoryWatcher() {
  assert(!on_watcher_thread() && "a DirectoryWatcher must not be destroyed from its callback");
  stop();
  if (state_->inotify_fd >= 0) ::close(state_->inotify_fd);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

bool DirectoryWatcher::on_watcher_thread() const {
  return worker_id_.load() == std::this_thread::get_id();
}

Result<void> DirectoryWatcher::start() {
  if (on_watcher_thread()) {
    return make_error(Errc::invalid_argument,
                      "directory watcher '" + dir_.string() + "': start() from its own callback");
  }
  MutexLock lock(lifecycle_mu_);
  if (started_ || stop_requested_.load()) {
    return make_error(Errc::invalid_argument,
                      "directory watcher '" + dir_.string() + "' was already started or stopped");
  }
  if (wake_fd_ < 0) {
    return make_error(Errc::io, "directory watcher '" + dir_.string() +
                                    "': cannot create an eventfd: " + errno_text(errno));
  }
  State& st = *state_;
  st.inotify_fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (st.inotify_fd < 0) {
    return make_error(Errc::io, "cannot watch directory '" + dir_.string() +
                                    "': inotify_init1: " + errno_text(errno));
  }
  // The watch first, then the scan: a change made between the two is seen by both, never by
  // neither.
  st.wd = ::inotify_add_watch(st.inotify_fd, dir_.c_str(), kWatchMask);
  if (st.wd < 0) {
    const int err = errno;
    ::close(st.inotify_fd);
    st.inotify_fd = -1;
    return make_error(Errc::io,
                      "cannot watch directory '" + dir_.string() + "': " + errno_text(err));
  }
  auto listed = list_directory(dir_, options_);
  if (!listed) {
    ::close(st.inotify_fd);
    st.inotify_fd = -1;
    return tl::unexpected(std::move(listed.error()));
  }
  const auto now = Clock::now();
  st.initial_due = now + options_.debounce;
  st.next_rescan = now + options_.rescan_interval;
  for (const auto& [name, sig] : *listed) {
    st.pending.emplace(name, State::Pending{st.initial_due, true, sig});
  }
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    ::close(st.inotify_fd);
    st.inotify_fd = -1;
    st.pending.clear();
    return make_error(Errc::io, "directory watcher '" + dir_.string() +
                                    "': cannot start its thread: " + e.what());
  }
  started_ = true;
  return {};
}

void DirectoryWatcher::stop() {
  stop_requested_.store(true);
  if (wake_fd_ >= 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(wake_fd_, &one, sizeof one);
  }
  // From within a callback: the thread sees the flag when the callback returns and delivers
  // nothing more. Joining here would be joining itself.
  if (on_watcher_thread()) return;
  MutexLock lock(lifecycle_mu_);
  if (thread_.joinable()) thread_.join();
}

void DirectoryWatcher::rescan() {
  rescan_requested_.store(true);
  if (wake_fd_ >= 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(wake_fd_, &one, sizeof one);
  }
}

std::uint64_t DirectoryWatcher::overflows() const { return overflows_.load(); }
std::uint64_t DirectoryWatcher::rescans() const { return rescans_.load(); }

// The watcher's loop: sleep until something is due (an inotify event, a wake-up, a name's look, the
// initial batch, a periodic rescan), note what changed, look at what is due, deliver what settled.
void DirectoryWatcher::run() {
  worker_id_.store(std::this_thread::get_id());
  State& st = *state_;
  const bool periodic = options_.rescan_interval.count() > 0;
  while (!stop_requested_.load()) {
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {st.inotify_fd, POLLIN, 0}};
    const int r = ::poll(fds, 2, poll_timeout_ms(Clock::now()));
    if (r < 0 && errno != EINTR) {
      report_error(Errc::io,
                   "directory watcher '" + dir_.string() + "': poll failed: " + errno_text(errno));
      break;
    }
    if (stop_requested_.load()) break;
    if (r > 0 && (fds[0].revents & POLLIN)) {
      std::uint64_t count = 0;
      [[maybe_unused]] const auto n = ::read(wake_fd_, &count, sizeof count);
    }
    const auto now = Clock::now();
    bool want_rescan = false;
    if (r > 0 && (fds[1].revents & POLLIN)) want_rescan = read_events(now);
    if (rescan_requested_.exchange(false)) want_rescan = true;
    if (periodic && now >= st.next_rescan) {
      want_rescan = true;
      st.next_rescan = now + options_.rescan_interval;
    }
    if (want_rescan) full_rescan(now);

    if (st.initial_pending && now < st.initial_due) continue;
    const auto batch = settle_due(now);
    if (st.initial_pending || !batch.empty()) {
      if (stop_requested_.load()) break;
      st.initial_pending = false;
      deliver(batch);
    }
    finish_rescans();
  }
  worker_id_.store(std::thread::id{});
}

// Until the earliest of: the initial batch (while it is pending, names wait for it), each pending
// name's look, the next periodic rescan; -1 (no limit) when none is due.
int DirectoryWatcher::poll_timeout_ms(TimePoint now) const {
  const State& st = *state_;
  std::optional<TimePoint> wake_at;
  auto sooner = [&](TimePoint t) {
    if (!wake_at || t < *wake_at) wake_at = t;
  };
  if (st.initial_pending) {
    sooner(st.initial_due);
  } else {
    for (const auto& entry : st.pending) sooner(entry.second.due);
  }
  if (options_.rescan_interval.count() > 0) sooner(st.next_rescan);
  if (!wake_at) return -1;
  const auto wait = std::chrono::ceil<std::chrono::milliseconds>(*wake_at - now).count();
  return static_cast<int>(std::clamp<decltype(wait)>(wait, 0, INT_MAX));
}

void DirectoryWatcher::report_error(Errc code, std::string message) {
  spdlog::warn("{}", message);
  if (!options_.on_error) return;
  try {
    options_.on_error(Error{code, std::move(message), {}});
  } catch (...) {
    spdlog::warn("directory watcher '{}': the error callback threw", dir_.string());
  }
}

void DirectoryWatcher::deliver(const std::vector<FileChange>& batch) {
  try {
    callback_(batch);
  } catch (const std::exception& e) {
    report_error(Errc::internal,
                 "directory watcher '" + dir_.string() + "': the callback threw: " + e.what());
  } catch (...) {
    report_error(Errc::internal,
                 "directory watcher '" + dir_.string() + "': the callback threw a non-exception");
  }
}

void DirectoryWatcher::finish_rescans() {
  State& st = *state_;
  if (st.rescans_in_flight > 0 && st.rescan_wait.empty()) {
    rescans_.fetch_add(st.rescans_in_flight);
    st.rescans_in_flight = 0;
  }
}

void DirectoryWatcher::full_rescan(TimePoint now) {
  State& st = *state_;
  if (st.wd < 0) {
    st.wd = ::inotify_add_watch(st.inotify_fd, dir_.c_str(), kWatchMask);
    if (st.wd >= 0) spdlog::info("directory watcher '{}': watching again", dir_.string());
  }
  ++st.rescans_in_flight;
  auto listed = list_directory(dir_, options_);
  if (!listed) {
    report_error(listed.error().code, listed.error().message);
  } else {
    // The listing is the first look at every name that differs from what was reported.
    for (const auto& [name, sig] : *listed) {
      auto rep = st.reported.find(name);
      if (rep != st.reported.end() && rep->second == sig) continue;
      st.pending.try_emplace(name, State::Pending{now + options_.debounce, true, sig});
    }
    for (const auto& [name, sig] : st.reported) {
      if (!listed->contains(name)) {
        st.pending.try_emplace(name, State::Pending{now + options_.debounce, true, std::nullopt});
      }
    }
  }
  // Complete once everything now in flight has settled, names changing anyway included.
  for (const auto& entry : st.pending) st.rescan_wait.insert(entry.first);
  finish_rescans();
}

std::vector<FileChange> DirectoryWatcher::settle_due(TimePoint now) {
  State& st = *state_;
  const auto debounce = options_.debounce;
  std::vector<FileChange> batch;
  for (auto it = st.pending.begin(); it != st.pending.end();) {
    auto& [name, p] = *it;
    if (p.due > now) {
      ++it;
      continue;
    }
    const auto current = look(dir_ / name);
    const auto rep = st.reported.find(name);
    bool settled = false;
    if (!p.looked) {
      if (!current && rep == st.reported.end()) {
        settled = true;  // absent and never reported: nothing to say
      } else {
        p = State::Pending{now + debounce, true, current};
      }
    } else if (current != p.seen) {
      p = State::Pending{now + debounce, true, current};  // still changing
    } else {
      settled = true;
      if (current && (rep == st.reported.end() || rep->second != *current)) {
        batch.push_back(FileChange{FileChange::Kind::present, dir_ / name, *current});
        st.reported.insert_or_assign(name, *current);
      } else if (!current && rep != st.reported.end()) {
        batch.push_back(FileChange{FileChange::Kind::removed, dir_ / name, rep->second});
        st.reported.erase(rep);
      }
    }
    if (settled) {
      st.rescan_wait.erase(name);
      it = st.pending.erase(it);
    } else {
      ++it;
    }
  }
  return batch;  // sorted: pending is ordered by name
}

bool DirectoryWatcher::read_events(TimePoint now) {
  State& st = *state_;
  alignas(inotify_event) char buf[64 * 1024];
  bool overflow = false;
  bool lost = false;
  for (;;) {
    const ssize_t n = ::read(st.inotify_fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        report_error(Errc::io, "directory watcher '" + dir_.string() +
                                   "': reading inotify events failed: " + errno_text(errno));
      }
      break;
    }
    if (n == 0) break;
    const auto size = static_cast<std::size_t>(n);
    for (std::size_t off = 0; off + sizeof(inotify_event) <= size;) {
      inotify_event ev;
      std::memcpy(&ev, buf + off, sizeof ev);
      const char* name = buf + off + sizeof ev;
      off += sizeof ev + ev.len;
      if (ev.mask & IN_Q_OVERFLOW) {
        overflow = true;
        overflows_.fetch_add(1);
        continue;
      }
      if (ev.wd != st.wd || st.wd < 0) continue;  // a watch removed earlier
      if (ev.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
        lost = true;
        continue;
      }
      if (ev.len == 0) continue;
      const fs::path file(std::string(name, ::strnlen(name, ev.len)));
      // Any event on a name: it is changing; wait for `debounce` of quiet before looking at it.
      if (accepts(options_, file)) {
        st.pending.insert_or_assign(file.string(),
                                    State::Pending{now + options_.debounce, false, std::nullopt});
      }
    }
  }
  if (lost) {
    // A moved directory keeps its watch: stop listening to it, or its events would be taken for
    // names under dir_.
    ::inotify_rm_watch(st.inotify_fd, st.wd);
    st.wd = -1;
    report_error(Errc::io, "directory watcher '" + dir_.string() +
                               "': the directory was deleted or moved away; its files are "
                               "reported removed, watching resumes at a rescan once it is back");
    overflow = true;  // rescan: report what vanished
  }
  return overflow;
}

}  // namespace flowreg::detail
