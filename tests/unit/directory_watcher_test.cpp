#include "plugin/directory_watcher.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace flowreg;
using namespace flowreg::detail;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// Deadlock guard only: never an assertion about speed.
constexpr auto kDeadline = 60s;

// A fresh directory under the system temp directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flowreg-watcher-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out);
  out << content;
  out.close();
  REQUIRE(out);
}

FileSignature lstat_signature(const fs::path& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return FileSignature{static_cast<std::uintmax_t>(st.st_size),
                       static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
                           static_cast<std::int64_t>(st.st_mtim.tv_nsec),
                       static_cast<std::uint64_t>(st.st_ino),
                       static_cast<std::uint32_t>(st.st_mode),
                       static_cast<std::uint32_t>(st.st_uid)};
}

// Collects the watcher's callbacks; tests wait on it with a deadline.
class Recorder {
 public:
  DirectoryWatcher::Callback callback() {
    return [this](const std::vector<FileChange>& batch) {
      std::lock_guard lock(mu_);
      batches_.push_back(batch);
      cv_.notify_all();
    };
  }

  // Waits until pred(all batches so far) holds; false at the deadline.
  bool wait(const std::function<bool(const std::vector<std::vector<FileChange>>&)>& pred) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kDeadline, [&] { return pred(batches_); });
  }
  bool wait_batches(std::size_t n) {
    return wait([n](const auto& b) { return b.size() >= n; });
  }
  // Waits for a change to `name` of `kind` after the first `skip` batches.
  bool wait_change(const std::string& name, FileChange::Kind kind, std::size_t skip = 1) {
    return wait([&](const auto& batches) {
      for (std::size_t i = skip; i < batches.size(); ++i) {
        for (const auto& c : batches[i]) {
          if (c.path.filename() == name && c.kind == kind) return true;
        }
      }
      return false;
    });
  }

  std::vector<std::vector<FileChange>> batches() const {
    std::lock_guard lock(mu_);
    return batches_;
  }
  // Every change after the first `skip` batches, in order.
  std::vector<FileChange> changes_after(std::size_t skip) const {
    std::lock_guard lock(mu_);
    std::vector<FileChange> out;
    for (std::size_t i = skip; i < batches_.size(); ++i) {
      out.insert(out.end(), batches_[i].begin(), batches_[i].end());
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::vector<FileChange>> batches_;
};

// Polls `pred` until it holds or the deadline passes (the sleep paces the polling; it proves
// nothing).
bool eventually(const std::function<bool()>& pred) {
  const auto until = std::chrono::steady_clock::now() + kDeadline;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// Asks for a full rescan and waits until it has completed: everything it found has been reported
// by then, so nothing still in flight can arrive after this returns. Twice, because the count may
// first move for a rescan that was already in flight when rescan() was called (an overflow's); the
// watcher completes all rescans in flight together, so the second round can only be satisfied by
// a rescan requested here.
void settle(DirectoryWatcher& w) {
  for (int round = 0; round < 2; ++round) {
    const auto before = w.rescans();
    w.rescan();
    REQUIRE(eventually([&] { return w.rescans() > before; }));
  }
}

// Starts w and waits for its first batch (the files present at the start); returns that batch.
std::vector<FileChange> start_and_first_batch(DirectoryWatcher& w, Recorder& rec) {
  REQUIRE(w.start());
  REQUIRE(rec.wait_batches(1));
  return rec.batches().front();
}

// Waits until `name` is reported present after the first batch, settles w, and returns the one
// change reported after the first batch (there must be exactly one).
FileChange only_change_after_first(DirectoryWatcher& w, Recorder& rec, const std::string& name) {
  REQUIRE(rec.wait_change(name, FileChange::Kind::present));
  settle(w);
  const auto after = rec.changes_after(1);
  REQUIRE(after.size() == 1);
  return after[0];
}

WatchOptions fast_options() {
  WatchOptions o;
  o.debounce = 100ms;
  o.rescan_interval = 0ms;
  return o;
}

std::vector<std::string> names(const std::vector<FileChange>& changes) {
  std::vector<std::string> out;
  for (const auto& c : changes) out.push_back(c.path.filename().string());
  return out;
}

}  // namespace

TEST_SUITE("directory_watcher") {
  TEST_CASE("the default filter takes .so names and rejects dot, temporary and other names") {
    CHECK(default_watch_filter("orders.so"));
    CHECK(default_watch_filter("lib-x.1.so"));
    CHECK_FALSE(default_watch_filter(".orders.so"));
    CHECK_FALSE(default_watch_filter("orders.so~"));
    CHECK_FALSE(default_watch_filter("orders.so.tmp"));
    CHECK_FALSE(default_watch_filter("orders.so.part"));
    CHECK_FALSE(default_watch_filter("orders.so.swp"));
    CHECK_FALSE(default_watch_filter("orders.so.1"));
    CHECK_FALSE(default_watch_filter("orders.txt"));
    CHECK_FALSE(default_watch_filter(""));
  }

  TEST_CASE("the initial scan reports existing matching files and ignores others") {
    TempDir dir;
    const auto& d = dir.path();
    write_file(d / "a.so", "aaaa");
    write_file(d / "b.so", "bb");
    write_file(d / ".hidden.so", "h");
    write_file(d / "c.so.tmp", "t");
    write_file(d / "c.so~", "t");
    write_file(d / "notes.txt", "n");
    fs::create_directory(d / "dir.so");
    REQUIRE(::mkfifo((d / "fifo.so").c_str(), 0600) == 0);
    fs::create_symlink("a.so", d / "link.so");

    Recorder rec;
    DirectoryWatcher w(d, fast_options(), rec.callback());
    const auto first = start_and_first_batch(w, rec);
    CHECK(names(first) == std::vector<std::string>{"a.so", "b.so", "link.so"});
    for (const auto& c : first) {
      CHECK(c.kind == FileChange::Kind::present);
      CHECK(c.path == d / c.path.filename());
      // A symlink is reported with lstat()'s signature, that of the link itself.
      CHECK(c.signature == lstat_signature(c.path));
    }

    // The one-shot scan sees the same.
    const auto once = scan_directory(d, WatchOptions{});
    CHECK(names(once) == names(first));

    settle(w);
    CHECK(rec.batches().size() == 1);
    CHECK(w.rescans() >= 1);
  }

  TEST_CASE("the first callback comes even when the directory is empty") {
    TempDir dir;
    Recorder rec;
    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    REQUIRE(w.start());
    REQUIRE(rec.wait_batches(1));
    CHECK(rec.batches().front().empty());
  }

  TEST_CASE("start() fails with an io error for a missing directory and for a second call") {
    TempDir dir;
    Recorder rec;
    DirectoryWatcher missing(dir.path() / "nope", fast_options(), rec.callback());
    const auto r = missing.start();
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::io);
    CHECK(r.error().message.find("nope") != std::string::npos);

    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    REQUIRE(w.start());
    const auto again = w.start();
    REQUIRE_FALSE(again);
    CHECK(again.error().code == Errc::invalid_argument);
  }

  TEST_CASE("a new file copied in is reported once") {
    TempDir dir;
    TempDir src;
    write_file(src.path() / "new.so", std::string(5000, 'x'));
    Recorder rec;
    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    REQUIRE(w.start());
    REQUIRE(rec.wait_batches(1));

    fs::copy_file(src.path() / "new.so", dir.path() / "new.so");
    const FileChange change = only_change_after_first(w, rec, "new.so");
    CHECK(change.kind == FileChange::Kind::present);
    CHECK(change.path == dir.path() / "new.so");
    CHECK(change.signature == lstat_signature(dir.path() / "new.so"));
    CHECK(change.signature.size == 5000);
  }

  TEST_CASE("a file written slowly in chunks is reported once, when complete") {
    TempDir dir;
    WatchOptions o = fast_options();
    o.debounce = 200ms;
    Recorder rec;
    DirectoryWatcher w(dir.path(), o, rec.callback());
    REQUIRE(w.start());
    REQUIRE(rec.wait_batches(1));

    // 15 chunks, 25 ms apart: the writing spans well over one debounce, each pause is shorter.
    constexpr std::size_t kChunks = 15, kChunk = 1000;
    {
      std::ofstream out(dir.path() / "slow.so", std::ios::binary);
      REQUIRE(out);
      for (std::size_t i = 0; i < kChunks; ++i) {
        out << std::string(kChunk, static_cast<char>('a' + i));
        out.flush();
        std::this_thread::sleep_for(25ms);
      }
    }
    const FileChange change = only_change_after_first(w, rec, "slow.so");
    CHECK(change.signature.size == kChunks * kChunk);
    CHECK(change.signature == lstat_signature(dir.path() / "slow.so"));
  }

  TEST_CASE("a file replaced by tmp + rename is reported once with the final signature") {
    TempDir dir;
    write_file(dir.path() / "p.so", "version one");
    Recorder rec;
    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    const auto first = start_and_first_batch(w, rec);
    REQUIRE(first.size() == 1);
    const auto old = first[0].signature;

    write_file(dir.path() / "p.so.tmp", "version two, longer");
    fs::rename(dir.path() / "p.so.tmp", dir.path() / "p.so");
    const FileChange change = only_change_after_first(w, rec, "p.so");
    CHECK(change.kind == FileChange::Kind::present);
    CHECK(change.signature == lstat_signature(dir.path() / "p.so"));
    CHECK(change.signature.inode != old.inode);
    CHECK(change.signature.size == std::string("version two, longer").size());
  }

  TEST_CASE("an in-place rewrite of the same inode is reported") {
    TempDir dir;
    write_file(dir.path() / "p.so", "version one");
    Recorder rec;
    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    const auto first = start_and_first_batch(w, rec);
    REQUIRE(first.size() == 1);
    const auto old = first[0].signature;

    write_file(dir.path() / "p.so", "version two");  // same size, same inode, new content
    const FileChange change = only_change_after_first(w, rec, "p.so");
    CHECK(change.signature.inode == old.inode);
    CHECK(change.signature.size == old.size);
    CHECK(change.signature.mtime_ns != old.mtime_ns);
    CHECK(change.signature == lstat_signature(dir.path() / "p.so"));
  }

  TEST_CASE("a metadata change that leaves the signature alone is not reported") {
    TempDir dir;
    write_file(dir.path() / "p.so", "content");
    Recorder rec;
    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    REQUIRE(start_and_first_batch(w, rec).size() == 1);

    // Only the access time changes: IN_ATTRIB, nothing the signature holds.
    const auto p = dir.path() / "p.so";
    const timespec times[2] = {{1'000'000, 0}, {0, UTIME_OMIT}};
    REQUIRE(::utimensat(AT_FDCWD, p.c_str(), times, 0) == 0);
    write_file(dir.path() / "q.so", "marker");  // a later change that must be reported
    REQUIRE(rec.wait_change("q.so", FileChange::Kind::present));
    settle(w);
    CHECK(names(rec.changes_after(1)) == std::vector<std::string>{"q.so"});
  }

  TEST_CASE("a change of permissions is reported, so a fixed plugin can load") {
    TempDir dir;
    write_file(dir.path() / "p.so", "content");
    Recorder rec;
    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    REQUIRE(w.start());
    REQUIRE(rec.wait_batches(1));
    fs::permissions(dir.path() / "p.so", fs::perms::group_write, fs::perm_options::remove);
    fs::permissions(dir.path() / "p.so", fs::perms::others_write | fs::perms::group_write,
                    fs::perm_options::add);  // IN_ATTRIB only: mode 0666
    REQUIRE(rec.wait_change("p.so", FileChange::Kind::present));
    settle(w);
    CHECK(names(rec.changes_after(1)) == std::vector<std::string>{"p.so"});
  }

  TEST_CASE("deleted and moved-out files are reported as removed once") {
    TempDir dir;
    TempDir elsewhere;
    write_file(dir.path() / "a.so", "a");
    write_file(dir.path() / "b.so", "b");
    write_file(dir.path() / "c.so", "c");
    Recorder rec;
    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    const auto first = start_and_first_batch(w, rec);
    REQUIRE(first.size() == 3);

    fs::remove(dir.path() / "a.so");
    fs::rename(dir.path() / "b.so", elsewhere.path() / "b.so");
    REQUIRE(rec.wait_change("a.so", FileChange::Kind::removed));
    REQUIRE(rec.wait_change("b.so", FileChange::Kind::removed));
    settle(w);
    const auto after = rec.changes_after(1);
    REQUIRE(after.size() == 2);
    for (const auto& c : after) {
      CHECK(c.kind == FileChange::Kind::removed);
      // removed carries the signature last reported as present
      const auto was = std::find_if(first.begin(), first.end(),
                                    [&](const FileChange& f) { return f.path == c.path; });
      REQUIRE(was != first.end());
      CHECK(c.signature == was->signature);
    }
  }

  TEST_CASE("a real inotify queue overflow triggers a rescan that reports what changed") {
    // The queue is overflowed for real, without touching the system-wide sysctl: the watcher's
    // thread is held inside its first callback while more events than max_queued_events are
    // generated (IN_ATTRIB alternating between two names, so the kernel cannot merge them); the
    // changes made after that are lost from the queue and only a rescan can find them.
    std::ifstream limit_file("/proc/sys/fs/inotify/max_queued_events");
    long limit = 0;
    REQUIRE(static_cast<bool>(limit_file >> limit));
    REQUIRE(limit > 0);
    REQUIRE(limit <= (1L << 22));

    TempDir dir;
    write_file(dir.path() / "old.so", "old");
    write_file(dir.path() / "x.txt", "x");
    write_file(dir.path() / "y.txt", "y");

    std::mutex gate_mu;
    std::condition_variable gate_cv;
    bool held = false;
    bool open = false;
    Recorder rec;
    auto record = rec.callback();
    DirectoryWatcher w(dir.path(), fast_options(), [&](const std::vector<FileChange>& batch) {
      record(batch);
      std::unique_lock lock(gate_mu);
      held = true;
      gate_cv.notify_all();
      gate_cv.wait(lock, [&] { return open; });
    });
    // Declared after the watcher: opens the gate before the watcher is destroyed, also when a
    // REQUIRE fails below.
    struct Opener {
      std::function<void()> fn;
      ~Opener() { fn(); }
    } opener{[&] {
      std::lock_guard lock(gate_mu);
      open = true;
      gate_cv.notify_all();
    }};

    REQUIRE(w.start());
    {
      std::unique_lock lock(gate_mu);
      REQUIRE(gate_cv.wait_for(lock, kDeadline, [&] { return held; }));
    }
    REQUIRE(rec.batches().front().size() == 1);  // old.so

    const auto x = dir.path() / "x.txt";
    const auto y = dir.path() / "y.txt";
    long failed_chmods = 0;
    for (long i = 0; i < limit + 64; ++i) {
      if (::chmod((i % 2 ? x : y).c_str(), (i / 2) % 2 ? 0600 : 0644) != 0) ++failed_chmods;
    }
    REQUIRE(failed_chmods == 0);
    write_file(dir.path() / "new.so", "new");
    fs::remove(dir.path() / "old.so");
    opener.fn();

    REQUIRE(rec.wait_change("new.so", FileChange::Kind::present));
    REQUIRE(rec.wait_change("old.so", FileChange::Kind::removed));
    CHECK(w.overflows() >= 1);
    settle(w);
    CHECK(rec.changes_after(1).size() == 2);
  }

  TEST_CASE("a rescan catches a change that inotify could not see") {
    // A write through a hard link in another directory changes the watched file (same inode)
    // without any event on the watched directory: only a rescan can find it.
    TempDir dir;
    TempDir other;
    write_file(dir.path() / "p.so", "short");
    fs::create_hard_link(dir.path() / "p.so", other.path() / "alias");

    WatchOptions o = fast_options();
    bool periodic = false;
    SUBCASE("the periodic rescan") {
      periodic = true;
      o.rescan_interval = 300ms;
    }
    SUBCASE("an explicit rescan()") { o.rescan_interval = 0ms; }

    Recorder rec;
    DirectoryWatcher w(dir.path(), o, rec.callback());
    REQUIRE(start_and_first_batch(w, rec).size() == 1);

    write_file(other.path() / "alias", "a longer content");
    if (periodic) {
      REQUIRE(rec.wait_change("p.so", FileChange::Kind::present));
    } else {
      settle(w);  // the rescan's reports come before it counts as complete
    }
    const auto after = rec.changes_after(1);
    REQUIRE(after.size() == 1);
    CHECK(after[0].signature.size == std::string("a longer content").size());
    CHECK(after[0].signature == lstat_signature(dir.path() / "p.so"));
  }

  TEST_CASE("losing the watched directory is reported as an error and its files as removed") {
    TempDir parent;
    const auto d = parent.path() / "plugins";
    fs::create_directory(d);
    write_file(d / "a.so", "a");

    std::mutex mu;
    std::vector<Error> errors;
    WatchOptions o = fast_options();
    o.on_error = [&](const Error& e) {
      std::lock_guard lock(mu);
      errors.push_back(e);
    };
    Recorder rec;
    DirectoryWatcher w(d, o, rec.callback());
    REQUIRE(start_and_first_batch(w, rec).size() == 1);

    fs::rename(d, parent.path() / "moved");
    REQUIRE(rec.wait_change("a.so", FileChange::Kind::removed));
    {
      std::lock_guard lock(mu);
      REQUIRE(!errors.empty());
      CHECK(errors.front().code == Errc::io);
      CHECK(errors.front().message.find("moved away") != std::string::npos);
    }
    // A change in the moved directory is not taken for one in the watched path.
    write_file(parent.path() / "moved" / "b.so", "b");

    // Back in place: the next rescan watches it again and reports its files.
    fs::rename(parent.path() / "moved", d);
    settle(w);
    const auto after = rec.changes_after(1);
    REQUIRE(after.size() == 3);
    CHECK(after[0].kind == FileChange::Kind::removed);
    CHECK(names({after[1], after[2]}) == std::vector<std::string>{"a.so", "b.so"});
    write_file(d / "c.so", "c");
    REQUIRE(rec.wait_change("c.so", FileChange::Kind::present));
  }

  TEST_CASE("stop() is prompt and idempotent") {
    TempDir dir;
    Recorder rec;
    DirectoryWatcher early(dir.path(), fast_options(), rec.callback());
    early.stop();  // before start(): the watcher is done for good
    const auto late = early.start();
    REQUIRE_FALSE(late);
    CHECK(late.error().code == Errc::invalid_argument);

    DirectoryWatcher w(dir.path(), fast_options(), rec.callback());
    REQUIRE(w.start());
    // After the initial batch nothing is due and there is no periodic rescan: the thread sleeps in
    // poll() without a timeout, and only the wake-up can end it.
    REQUIRE(rec.wait_batches(1));
    auto stopped = std::async(std::launch::async, [&] { w.stop(); });
    if (stopped.wait_for(kDeadline) != std::future_status::ready) {
      FAIL_CHECK("stop() did not return");
      std::fflush(nullptr);
      std::_Exit(EXIT_FAILURE);  // the hung stop() cannot be abandoned any other way
    }
    w.stop();
    w.rescan();  // harmless once stopped
    CHECK(rec.batches().size() == 1);
  }

  TEST_CASE("stop() from within a callback returns and no callback follows") {
    TempDir dir;
    Recorder rec;
    auto record = rec.callback();
    DirectoryWatcher* self = nullptr;
    bool returned = false;  // written and read on the watcher's thread, read here after the join
    DirectoryWatcher w(dir.path(), fast_options(), [&](const std::vector<FileChange>& batch) {
      try {
        self->stop();  // a naive join of itself would throw or hang here
        returned = true;
      } catch (...) {
      }
      record(batch);
    });
    self = &w;
    REQUIRE(w.start());
    REQUIRE(rec.wait_batches(1));
    write_file(dir.path() / "a.so", "a");
    w.rescan();
    w.stop();  // joins the thread that stopped itself
    CHECK(returned);
    CHECK(rec.batches().size() == 1);
  }
}
