#pragma once
// Quarantine: plugin contents (by SHA-256) that must not be loaded again until the file changes,
// because they crashed, hung or left a process behind in the inspection process, or crashed a
// flowreg process while it loaded them (counted across restarts through a CrashJournal). A hang
// keeps the time limit it had: a longer plugins.scan_timeout gives it another chance.
//
// On disk, under the plugin cache directory:
//   quarantine/<sha256>.json  {"stage", "message", "timeout_ms"?} (older versions: <sha256>.txt,
//                             the stage on the first line and the message after it)
//   crashes/<sha256>/<id>.json  one file per load that a process did not survive
//   journal/                  the CrashJournal of loads in progress
// Several processes may share these (workers and `flowreg serve` of one configuration): records
// are written whole (temporary file + rename), and each crash is a file of its own, so that
// processes counting at the same time never lose one.
//
// Thread-safety: not synchronized. The owner serializes every call (PluginLoader::Impl calls it
// with its mutex held, and guards its Quarantine with it).
// Errors: none reported; a record that cannot be read is ignored, one that cannot be written is
// kept in memory only (best effort: quarantine protects, it never stops a scan).

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "flowreg/plugins.hpp"
#include "util/crash_journal.hpp"

namespace flowreg::detail {

// A quarantined content: why, and for a hang, the time it was given (a longer plugins.scan_timeout
// gives it another chance).
struct QuarantineRecord {
  PluginError error;
  std::optional<long long> timeout_ms;
};

// Loads that crashed the process (orphaned journal records) quarantine the content after this
// many.
constexpr std::size_t kMaxLoadCrashes = 2;

class Quarantine {
 public:
  // `cache_dir`: the plugin cache directory. Reads nothing before load().
  explicit Quarantine(std::filesystem::path cache_dir);
  Quarantine(const Quarantine&) = delete;
  Quarantine& operator=(const Quarantine&) = delete;

  // Reads the records on disk, then counts the loads that processes did not survive (orphaned
  // journal records) and quarantines each content that crashed kMaxLoadCrashes times.
  void load();

  // The record of a quarantined content; nullptr when `sha256` is not quarantined. Valid until
  // the next remember() or forget().
  const QuarantineRecord* find(const std::string& sha256) const;
  // Quarantines `sha256` (in memory and on disk); replaces an earlier record of that content.
  void remember(const std::string& sha256, const PluginError& error,
                std::optional<long long> timeout_ms = std::nullopt);
  // Lets `sha256` be loaded again (in memory and on disk).
  void forget(const std::string& sha256);

  // How many loads of `sha256` crashed a process in a row.
  std::size_t load_crashes(const std::string& sha256) const;
  // Names the content loading in this process (`file` is the file the user dropped in) for the
  // duration of the returned entry: if this process dies on the way, the next one counts the
  // crash against it.
  CrashJournal::Entry begin_load(const std::string& sha256, const std::filesystem::path& file);
  // A load of `sha256` that this process survived: crashes count while they are consecutive.
  void clear_load_crashes(const std::string& sha256);

 private:
  void read_records();
  void count_load_crashes();
  std::filesystem::path records_dir() const { return cache_dir_ / "quarantine"; }
  std::filesystem::path crashes_dir(const std::string& sha) const {
    return cache_dir_ / "crashes" / sha;
  }

  std::filesystem::path cache_dir_;
  std::map<std::string, QuarantineRecord> records_;  // by sha256
  // Records a load in this process before it starts and clears it after: a record left behind
  // means this process died while loading (see CrashJournal).
  CrashJournal journal_;
};

}  // namespace flowreg::detail
