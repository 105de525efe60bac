#pragma once
// A worker's crash journal: which tasks have handlers running in this process, on disk, so that
// a worker starting later can tell the store what a dead one was running (a handler that kills
// its worker then fails its task instead of being retried until its attempts run out).
//
// Not util/crash_journal.hpp (a file written and renamed per record, used around plugin loads):
// a task is the hot path, so a record here is a few stores into a slot of a file opened once and
// mapped shared (its first 1,024 slots; a slot after them is one pwrite(2)), and that mapping is
// what the fatal-signal handler writes the attribution to.
//
// One file per process, <dir>/<pid>-<random>.journal, flock()ed while the process lives (a
// worker starting on the same directory recognises the journals of dead processes by taking
// their lock; several workers may share a directory). The file is a row of fixed-size slots, one
// per handler thread:
//   "R <task> <attempt>"           the thread runs that task's handler
//   "S <signal> <task> <attempt>"  a fatal signal hit the thread while it ran that handler
//   blank                          idle
// A slot is written before the handler is called and cleared after it returns; a record the
// process's death cut short reads as blank (see write_slot).
// open() installs a handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT that turns the
// crashing thread's slot into an "S" record (async-signal-safe: formatting by hand and stores
// into the mapping, or pwrite to the descriptor, made beforehand), restores the previous
// disposition and lets the signal take its course (re-raised when it was sent rather than caused by
// a fault). A crash on a thread that runs no handler, or a SIGKILL, leaves "R" records only: those
// tasks were running, but nothing says they caused it.
//
// Limits: a stack overflow in a handler is not attributed (no alternate signal stack); the lock
// is flock(2), which does not span hosts on every network file system.
//
// Journals are created as "<name>.journal.new", locked, then renamed, so collect() never finds
// one that is not locked yet. A child forked by a handler closes its copy of the descriptor,
// unmaps its copy of the mapping, and writes nothing (pthread_atfork): a long-lived child does not
// keep a dead worker's journal locked, and a crash in the child is not written into the parent's
// slot.
//
// Thread-safety: begin() and end() from any thread (each touches only its own slot), also
// concurrently with close(); one journal per process (open() fails for a second one while the
// first is open).

#include <atomic>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "flowreg/error.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

class TaskJournal {
 public:
  // The journal of a process that died, still locked by the caller until released.
  class Leftover {
   public:
    Leftover(std::filesystem::path file, int fd, std::vector<CrashReport> entries);
    ~Leftover();  // releases the lock and keeps the file (its entries were not reported)
    Leftover(Leftover&& other) noexcept;
    Leftover& operator=(Leftover&&) = delete;
    Leftover(const Leftover&) = delete;
    Leftover& operator=(const Leftover&) = delete;

    const std::filesystem::path& file() const noexcept { return file_; }
    const std::vector<CrashReport>& entries() const noexcept { return entries_; }
    // Removes the file (its entries are reported), then releases the lock.
    void discard();

   private:
    std::filesystem::path file_;
    int fd_ = -1;
    std::vector<CrashReport> entries_;
  };

  // Creates `dir` when missing and opens this process's journal there; installs the signal
  // handler. Errc::io when the directory or the file cannot be made.
  static Result<std::unique_ptr<TaskJournal>> open(const std::filesystem::path& dir);
  // The journals of dead processes in `dir` (none when it does not exist), each locked.
  static std::vector<Leftover> collect(const std::filesystem::path& dir);

  ~TaskJournal();  // close()
  TaskJournal(const TaskJournal&) = delete;
  TaskJournal& operator=(const TaskJournal&) = delete;

  // The calling thread starts / ended running the handler of this task attempt.
  void begin(TaskId id, int attempt) noexcept;
  void end() noexcept;

  // Uninstalls the signal handler and removes the file (a clean exit leaves no journal); begin()
  // and end() do nothing afterwards. The descriptor and the mapping stay while the process lives:
  // handlers still running may call begin()/end() concurrently with close().
  void close() noexcept;

  const std::filesystem::path& file() const noexcept { return file_; }

 private:
  TaskJournal(std::filesystem::path file, int fd, char* map)
      : file_(std::move(file)), fd_(fd), map_(map) {}

  const std::filesystem::path file_;
  const int fd_;     // open until the process ends (see close())
  char* const map_;  // its first slots, mapped until the process ends; nullptr: none
  std::atomic<bool> open_{true};
};

}  // namespace flowreg::detail
