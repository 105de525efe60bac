#pragma once
// Crash attribution: a record written to a file before something that may kill the process
// (loading a plugin) and removed right after it. A record still there after its process is gone
// names what was running when that process died; the next process to start reads it. Handlers use
// worker/task_journal.hpp instead, made for a per-task cost of one pwrite.
//
// Several processes share a journal directory (workers, CLI commands): each writes and removes
// only its own records, named by its pid and start time, so a record is an orphan exactly when that
// process no longer runs. Records are written whole (temporary file + rename) and without fsync:
// they must survive the death of the process, not of the machine.
//
// Thread-safety: all member functions may be called concurrently, also from several processes.

#include <atomic>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace flowreg::detail {

class CrashJournal {
 public:
  // `dir` is created on the first record (0700).
  explicit CrashJournal(std::filesystem::path dir);
  CrashJournal(const CrashJournal&) = delete;
  CrashJournal& operator=(const CrashJournal&) = delete;

  // A record on disk while it lives; removed by its destructor. Movable, not copyable. Empty (no
  // file) when the record could not be written: journaling is best effort and never stops work.
  class Entry {
   public:
    Entry() = default;
    Entry(Entry&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
    Entry& operator=(Entry&& other) noexcept;
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;
    ~Entry();
    bool written() const noexcept { return !path_.empty(); }

   private:
    friend class CrashJournal;
    explicit Entry(std::filesystem::path path) : path_(std::move(path)) {}
    std::filesystem::path path_;
  };

  // Writes `record` (a JSON object) for the duration of the returned Entry. Nothing is written when
  // this process cannot read its own start time (no /proc): it could not be told from a dead one.
  Entry begin(const nlohmann::json& record);

  struct Orphan {
    std::string id;  // unique among all records ever written to this directory
    nlohmann::json record;
  };
  // The records of processes that no longer run. Each is claimed by exactly one caller, even when
  // several processes collect at once, and removed from the journal.
  std::vector<Orphan> collect_orphans();

 private:
  std::filesystem::path dir_;
  std::atomic<unsigned long> next_{0};
};

// The start time of process `pid` (field 22 of /proc/PID/stat, in clock ticks since boot), or 0
// when it does not run. With the pid it names a process uniquely (pids are reused).
unsigned long long process_start_time(long pid);

}  // namespace flowreg::detail
