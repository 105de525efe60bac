#include "worker/task_journal.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>
#include <sstream>

namespace flowreg::detail {

namespace {

constexpr std::size_t kSlot = 64;  // bytes per slot, the last one '\n'
// The slots written through a shared mapping of the file (see open()); a thread whose slot comes
// after them writes with pwrite(2).
constexpr std::size_t kMappedSlots = 1024;
constexpr std::size_t kMappedBytes = kMappedSlots * kSlot;
constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

// What the signal handler reads. Plain integers: a signal handler may read them at any time.
std::atomic<int> g_fd{-1};
std::atomic<char*> g_map{nullptr};  // the mapping of g_fd's first kMappedBytes, if any
std::atomic<int> g_next_slot{0};
struct sigaction g_previous[NSIG];
bool g_installed = false;
// True in a child forked by this process (a handler's): nothing there writes to the journal.
std::atomic<bool> g_forked{false};

// Thread-local, of trivial types: no initialization guard, readable from a signal handler.
thread_local int t_slot = -1;
thread_local long long t_task = 0;
thread_local int t_attempt = 0;

// Appends the decimal digits of v to buf at *at (async-signal-safe).
void put_number(char* buf, std::size_t* at, long long v) {
  char digits[24];
  int n = 0;
  if (v < 0) {
    buf[(*at)++] = '-';
    v = -v;
  }
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0 && n < 20);
  while (n > 0 && *at < kSlot - 1) buf[(*at)++] = digits[--n];
}

void put_char(char* buf, std::size_t* at, char c) {
  if (*at < kSlot - 1) buf[(*at)++] = c;
}

// A full slot: the record, padded with spaces, ending in '\n'.
void fill(char* buf, std::size_t used) {
  for (std::size_t i = used; i < kSlot - 1; ++i) buf[i] = ' ';
  buf[kSlot - 1] = '\n';
}

// Writes slot `slot`: into the mapping `map` when it has that slot, else with pwrite(2) to `fd`.
// A slot in the mapping is written as plain stores, which the process's death may cut short
// (pwrite's copy cannot be: a signal, SIGKILL too, takes effect when the call returns). So its
// first byte, the record's kind, is made blank first and written last: a record cut short reads
// as a blank slot (crash not attributed), never as a record naming another task. Only the
// compiler's order of those stores matters (a signal fence; a thread fence is not needed, and
// ThreadSanitizer does not support it): the journal is read once its process died (collect()
// takes only unlocked ones), when memory holds the stores each thread made before it was stopped,
// a prefix of them in program order. Async-signal-safe.
void write_slot(int fd, char* map, int slot, const char* buf) {
  if (slot < 0) return;
  if (map != nullptr && static_cast<std::size_t>(slot) < kMappedSlots) {
    char* at = map + static_cast<std::size_t>(slot) * kSlot;
    std::atomic_ref<char>(at[0]).store(' ', std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    std::memcpy(at + 1, buf + 1, kSlot - 1);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    std::atomic_ref<char>(at[0]).store(buf[0], std::memory_order_relaxed);
    return;
  }
  if (fd < 0) return;
  const off_t at = static_cast<off_t>(slot) * static_cast<off_t>(kSlot);
  ssize_t n = 0;
  do {
    n = ::pwrite(fd, buf, kSlot, at);
  } while (n < 0 && errno == EINTR);
}

// Writes "R <task> <attempt>" (signal < 0) or "S <signal> <task> <attempt>" into slot `slot`.
// Async-signal-safe: formats by hand on the stack and calls write_slot.
void write_record(int fd, char* map, int slot, int signal, TaskId task, int attempt) {
  char buf[kSlot];
  std::size_t at = 0;
  put_char(buf, &at, signal < 0 ? 'R' : 'S');
  if (signal >= 0) {
    put_char(buf, &at, ' ');
    put_number(buf, &at, signal);
  }
  put_char(buf, &at, ' ');
  put_number(buf, &at, task);
  put_char(buf, &at, ' ');
  put_number(buf, &at, attempt);
  fill(buf, at);
  write_slot(fd, map, slot, buf);
}

// In a child forked after open() (a handler may fork without exec; O_CLOEXEC covers exec): the
// child would otherwise hold the journal's lock after the worker died, so that no worker ever
// reports it, and a crash in the child would write into the parent's slot. Closing the child's
// copy of the descriptor and unmapping its copy of the mapping (which holds the open file too)
// leaves the parent's lock alone (flock belongs to the open file, which the parent still holds).
// Runs in the child right after fork(): async-signal-safe calls only (and munmap, a system call).
void in_forked_child() {
  g_forked.store(true);
  t_slot = -1;
  t_task = 0;
  if (char* map = g_map.exchange(nullptr)) ::munmap(map, kMappedBytes);
  const int fd = g_fd.exchange(-1);
  if (fd < 0) return;
  if (g_installed) {
    for (int sig : kSignals) ::sigaction(sig, &g_previous[sig], nullptr);
    g_installed = false;
  }
  ::close(fd);
}

void on_fatal_signal(int sig, siginfo_t* info, void*) {
  const int saved_errno = errno;
  const int fd = g_fd.load(std::memory_order_relaxed);
  if (fd >= 0 && t_slot >= 0 && t_task > 0) {
    write_record(fd, g_map.load(std::memory_order_relaxed), t_slot, sig, t_task, t_attempt);
  }
  // Whatever handled the signal before takes it from here: a fault happens again when the
  // instruction is retried; a signal that was sent (raise, abort, kill) is sent again.
  ::sigaction(sig, &g_previous[sig], nullptr);
  if (info == nullptr || info->si_code <= 0) ::raise(sig);
  errno = saved_errno;
}

std::vector<CrashReport> parse(const std::string& text) {
  std::vector<CrashReport> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::string kind;
    if (!(fields >> kind)) continue;
    CrashReport r;
    if (kind == "S") {
      int sig = 0;
      if (!(fields >> sig >> r.id >> r.attempt)) continue;
      r.signal = sig;
    } else if (kind != "R" || !(fields >> r.id >> r.attempt)) {
      continue;
    }
    if (r.id > 0) out.push_back(r);
  }
  return out;
}

}  // namespace

TaskJournal::Leftover::Leftover(std::filesystem::path file, int fd,
                                std::vector<CrashReport> entries)
    : file_(std::move(file)), fd_(fd), entries_(std::move(entries)) {}

TaskJournal::Leftover::Leftover(Leftover&& other) noexcept
    : file_(std::move(other.file_)),
      fd_(std::exchange(other.fd_, -1)),
      entries_(std::move(other.entries_)) {}

TaskJournal::Leftover::~Leftover() {
  if (fd_ >= 0) ::close(fd_);
}

void TaskJournal::Leftover::discard() {
  if (fd_ < 0) return;
  std::error_code ec;
  std::filesystem::remove(file_, ec);  // before unlocking: nobody takes it up again
  ::close(fd_);
  fd_ = -1;
}

Result<std::unique_ptr<TaskJournal>> TaskJournal::open(const std::filesystem::path& dir) {
  if (g_fd.load() >= 0)
    return make_error(Errc::internal, "a crash journal is already open in this process");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return make_error(Errc::io, fmt::format("cannot create the crash journal directory {}: {}",
                                            dir.string(), ec.message()));
  static const bool fork_handler = ::pthread_atfork(nullptr, nullptr, in_forked_child) == 0;
  if (!fork_handler)
    return make_error(Errc::internal, "cannot register the crash journal's fork handler");
  // Created under a name collect() ignores and locked there, then renamed: collect() never sees
  // this journal unlocked (it would take an empty, unlocked journal for a dead worker's and
  // remove it). A process that dies in between leaves an empty "*.journal.new", which nothing
  // reads.
  std::random_device rd;
  const auto file = dir / fmt::format("{}-{:08x}.journal", ::getpid(), rd());
  auto creating = file;
  creating += ".new";
  const int fd = ::open(creating.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return make_error(Errc::io, fmt::format("cannot create the crash journal {}: {}",
                                            creating.string(), std::strerror(errno)));
  const auto give_up = [&](const char* what) {
    const int err = errno;
    ::unlink(creating.c_str());
    ::close(fd);
    return make_error(Errc::io, fmt::format("cannot {} the crash journal {}: {}", what,
                                            file.string(), std::strerror(err)));
  };
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) return give_up("lock");
  // The first kMappedSlots slots, blank, mapped shared: a record there is a few stores, not a
  // system call (two per handler call: pwrite took a fifth of a worker's CPU draining 3-step
  // chains, its copy into ext4 serialized on the file's inode lock). The stores are the page
  // cache's, as pwrite's are: another process reads them, and they outlive this one. Without
  // the mapping (it failed), every slot is written with pwrite.
  {
    std::string blank(kMappedBytes, ' ');
    for (std::size_t i = kSlot - 1; i < blank.size(); i += kSlot) blank[i] = '\n';
    if (::pwrite(fd, blank.data(), blank.size(), 0) != static_cast<ssize_t>(blank.size()))
      return give_up("write");
  }
  void* mapped = ::mmap(nullptr, kMappedBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  char* map = mapped == MAP_FAILED ? nullptr : static_cast<char*>(mapped);
  if (::renameat2(AT_FDCWD, creating.c_str(), AT_FDCWD, file.c_str(), RENAME_NOREPLACE) != 0) {
    if (map != nullptr) ::munmap(map, kMappedBytes);
    return give_up("name");
  }
  std::unique_ptr<TaskJournal> journal(new TaskJournal(file, fd, map));
  g_forked = false;  // a forked child that opens a journal of its own writes to that one
  g_next_slot = 0;
  g_map = map;
  g_fd = fd;
  struct sigaction action {};
  action.sa_sigaction = on_fatal_signal;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  for (int sig : kSignals) ::sigaction(sig, &action, &g_previous[sig]);
  g_installed = true;
  return journal;
}

std::vector<TaskJournal::Leftover> TaskJournal::collect(const std::filesystem::path& dir) {
  std::vector<Leftover> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".journal") continue;
    const int fd = ::open(entry.path().c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;
    struct stat st {};
    // Locked: its process lives. Unlinked once locked: another worker took it up first.
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0 || ::fstat(fd, &st) != 0 || st.st_nlink == 0 ||
        !S_ISREG(st.st_mode) || st.st_size > (1 << 20)) {
      ::close(fd);
      continue;
    }
    std::string text(static_cast<std::size_t>(st.st_size), '\0');
    const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
    text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    out.emplace_back(entry.path(), fd, parse(text));
  }
  return out;
}

TaskJournal::~TaskJournal() { close(); }

void TaskJournal::begin(TaskId id, int attempt) noexcept {
  if (!open_.load(std::memory_order_relaxed) || g_forked.load(std::memory_order_relaxed)) return;
  if (t_slot < 0) t_slot = g_next_slot.fetch_add(1);
  t_task = id;
  t_attempt = attempt;
  write_record(fd_, map_, t_slot, -1, id, attempt);
}

void TaskJournal::end() noexcept {
  if (!open_.load(std::memory_order_relaxed) || g_forked.load(std::memory_order_relaxed) ||
      t_slot < 0)
    return;
  t_task = 0;
  char buf[kSlot];
  fill(buf, 0);
  write_slot(fd_, map_, t_slot, buf);
}

// The descriptor is never closed, nor the mapping unmapped. Handlers that outlived their timeout
// may still be running and call begin()/end() on other threads after this: with the descriptor
// closed, its number could be reused by any file the process opens next (a database socket, a
// plugin), and their pwrite() would scribble over it; with the mapping gone, their stores would
// fault. Left in place, they write into the removed file, which nothing reads; the cost is one
// descriptor and 64 KiB of mapping per journal opened, and a worker opens one.
void TaskJournal::close() noexcept {
  if (!open_.exchange(false)) return;
  if (g_installed) {
    for (int sig : kSignals) ::sigaction(sig, &g_previous[sig], nullptr);
    g_installed = false;
  }
  g_fd = -1;
  g_map = nullptr;
  std::error_code ec;
  std::filesystem::remove(file_, ec);
}

}  // namespace flowreg::detail
