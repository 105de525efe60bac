#pragma once
// DirectoryWatcher: reports debounced, stable changes of the files in one directory (inotify).
//
// It knows nothing about plugins: the plugin loader uses it for hot drop-in and decides itself what
// to do with a name (hash it, stage it, load it). Events are only hints: a name is reported after
// it has been quiet for `debounce` and then had the same signature (size, mtime, inode) at two
// lstat() looks `debounce` apart. Files are never opened (a FIFO cannot block the watcher).
//
// Linux only (inotify, eventfd, poll).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/thread_annotations.hpp"

namespace flowreg::detail {

// What identifies one version of a file without reading it (from lstat()).
struct FileSignature {
  std::uintmax_t size = 0;
  std::int64_t mtime_ns = 0;
  std::uint64_t inode = 0;
  // Mode and owner count too: whether a plugin may load depends on them, so a `chmod go-w` that
  // fixes a rejected file must reach the loader.
  std::uint32_t mode = 0;
  std::uint32_t uid = 0;
  bool operator==(const FileSignature&) const = default;
};

struct FileChange {
  enum class Kind { present, removed };
  Kind kind;
  std::filesystem::path path;  // the watched directory / the file name
  FileSignature signature;     // for `removed`: the signature last reported as present
};

struct WatchOptions {
  // Quiet time per name before it is looked at; a report needs two equal looks this far apart, so
  // a change is reported at the earliest 2 * debounce after its last event.
  std::chrono::milliseconds debounce{500};
  // Periodic full rescan (the fallback for events inotify cannot see); 0 = never.
  std::chrono::milliseconds rescan_interval{30'000};
  // Which names count. Called with the file name only (no directory), on the watcher's thread and
  // on the thread that calls start() or scan_directory(). Empty = default_watch_filter.
  std::function<bool(const std::filesystem::path&)> filter;
  // Optional: trouble that is not about one file: the watched directory was deleted or moved away
  // (the watcher keeps running, reports its files as removed and re-adds the watch at a later
  // rescan when the directory is back), reading inotify failed, the callback threw. Called on the
  // watcher's thread, never concurrently with the change callback. Every such error is also
  // logged (spdlog, warn).
  std::function<void(const Error&)> on_error;
};

// The default filter: names ending in ".so" that do not start with '.' and do not end in "~",
// ".tmp", ".part" or ".swp".
bool default_watch_filter(const std::filesystem::path& name);

// Watches one directory and calls `callback` with batches of settled changes.
//
// Thread-safety: start(), stop(), rescan(), overflows() and rescans() may be called from any
// thread, concurrently. Callbacks (change and on_error) run on the watcher's own thread, one at a
// time, never after stop() has returned.
//
// First callback: start() adds the inotify watch first, then scans the directory (the first look
// at every matching file), then starts the thread. One debounce later the thread looks again and
// delivers the initial batch: `present` for every matching file whose signature was the same at
// both looks, sorted by path. This first callback always comes (possibly with an empty vector), so
// the caller knows the initial state is complete. A file still changing during startup is left out
// of it and reported on its own once it has settled.
//
// Later callbacks: each batch holds the names that settled at the same time, sorted by path.
// `present` is reported for a name whose signature differs from the one last reported for it;
// `removed` for a name that was reported present and is now absent (or no longer a regular file
// or symlink). Symlinks are reported with lstat()'s signature (of the link itself); directories,
// FIFOs, sockets and devices never are.
//
// Limits: a writer that pauses longer than about 2 * debounce mid-file gets the partial file
// reported, and the complete file reported again once it settles. A rewrite that keeps size, mtime
// and inode (cp -p in place) is not a change to this watcher.
//
// REQUIRES: the watcher is not destroyed from within its own callback (stop() from within a
// callback is fine: it returns at once and no further callback is made).
// Neither copyable nor movable: the thread refers to it.
class DirectoryWatcher {
 public:
  using Callback = std::function<void(const std::vector<FileChange>&)>;

  DirectoryWatcher(std::filesystem::path dir, WatchOptions options, Callback callback);
  ~DirectoryWatcher();  // stop()s
  DirectoryWatcher(const DirectoryWatcher&) = delete;
  DirectoryWatcher& operator=(const DirectoryWatcher&) = delete;
  DirectoryWatcher(DirectoryWatcher&&) = delete;
  DirectoryWatcher& operator=(DirectoryWatcher&&) = delete;

  // Errors: io when the directory cannot be watched (missing, not a directory, no permission,
  // inotify limits); invalid_argument when called a second time or after stop() (a watcher runs
  // at most once).
  Result<void> start();
  // Idempotent. Joins the thread unless called from within a callback (then the thread ends
  // after that callback returns, and a later stop() or the destructor joins it).
  void stop();
  // Asks the watcher's thread for a full rescan now: every matching name whose signature differs
  // from what was last reported, and every reported name now absent, is looked at again and
  // reported once stable. No-op once stopped.
  void rescan();

  // Test hooks. overflows(): IN_Q_OVERFLOW events seen. rescans(): full rescans completed
  // (explicit, periodic and after an overflow); a rescan completes when every difference it found
  // has settled (has been reported, or turned out to be no change), so its reports come before the
  // count moves.
  std::uint64_t overflows() const;
  std::uint64_t rescans() const;

 private:
  struct State;  // the watcher thread's state (inotify fd, pending names, last reported)
  using TimePoint = std::chrono::steady_clock::time_point;

  // The watcher's thread and the steps of its loop; they touch State, on that thread only.
  void run();
  int poll_timeout_ms(TimePoint now) const;  // until the next thing due; -1: nothing is
  // Drains the inotify queue; each event on a matching name makes it pending (it is changing: it
  // waits for `debounce` of quiet before its first look). Returns whether a full rescan is needed
  // (the queue overflowed, or the directory was deleted or moved away).
  bool read_events(TimePoint now);
  // Lists the directory: every name whose signature differs from the one reported, and every
  // reported name now absent, becomes pending with that listing as its first look.
  void full_rescan(TimePoint now);
  // Looks at every pending name that is due; returns the ones that settled with a change to
  // report, sorted by path.
  std::vector<FileChange> settle_due(TimePoint now);
  void finish_rescans();  // counts the rescans whose names have all settled
  void deliver(const std::vector<FileChange>& batch);  // the callback, its exceptions contained
  void report_error(Errc code, std::string message);   // logs, then on_error
  bool on_watcher_thread() const;

  const std::filesystem::path dir_;
  const WatchOptions options_;
  const Callback callback_;
  std::unique_ptr<State> state_;
  int wake_fd_ = -1;  // eventfd: stop and rescan wake-ups; owned, closed by the destructor
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> rescan_requested_{false};
  std::atomic<std::uint64_t> overflows_{0};
  std::atomic<std::uint64_t> rescans_{0};
  std::atomic<std::thread::id> worker_id_{};

  AnnotatedMutex lifecycle_mu_;  // serializes start() and the join in stop()
  std::thread thread_ FLOWREG_GUARDED_BY(lifecycle_mu_);
  bool started_ FLOWREG_GUARDED_BY(lifecycle_mu_) = false;
};

// One-shot scan without watching (for `flowreg plugins list` in a short-lived process): `present`
// for every matching name, with one lstat() each (no stability check), sorted by path. A missing
// or unreadable directory yields an empty vector.
std::vector<FileChange> scan_directory(const std::filesystem::path& dir,
                                       const WatchOptions& options);

}  // namespace flowreg::detail
