#pragma once
// Ownership of module names and flow slugs contested by two plugin files, and its ledger
// <cache_dir>/owners.json.
//
// The rule: the incumbent keeps a name. A file that declares a module name or a flow slug that
// another file holds waits (PluginStatus::waiting) until the name is free -- its holder removed,
// or changed so that it no longer declares the name -- and then gets it at once, the longest
// waiting file first. Neither file names nor directory order ever decide.
//
// Across restarts the incumbents are those of the last run, persisted in <cache_dir>/owners.json
// (file -> the names it held) after every change. Until an incumbent of the last run has been
// loaded (or found gone), the names it held are reserved for it: a newcomer waits for them
// whatever the order in which the files are read (and incumbents are read first, so that it
// rarely has to). Files that claim a name nobody held before in the same batch (a first start
// with both present) are taken in order of their inode change time (ctime), oldest first, then
// by path: the file installed first wins, and a newcomer cannot make its ctime older (the kernel
// sets it on every change, chmod and touch included).
//
// NameOwnership keeps the part of the rule that outlives a process: the reservations read from
// the ledger, the files of the batch being loaded, the order in which files claim names. Who holds
// a name now (the registry and the loader's modules) is the loader's: PluginLoader::Impl combines
// both in held_elsewhere.
//
// Thread-safety: not synchronized. The owner serializes every call (PluginLoader::Impl calls it
// with its mutex held, and guards its NameOwnership with it). Several processes may share the
// ledger: it is replaced whole (temporary file + rename), never written in place.
// Errors: none reported; an unreadable ledger is an empty one, and one that cannot be written
// stays as it was (the names are then decided as on a first start).

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/plugins.hpp"
#include "plugin/directory_watcher.hpp"

namespace flowreg::detail {

// How a file is named in the owners ledger and compared with another: absolute, normalized and
// with symbolic links resolved, so that a relative plugins directory, another working directory
// or an absolute path given on the command line all name the same file the same way.
std::filesystem::path file_key(const std::filesystem::path& path);
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b);

// A module name or flow slug that a file declares and another file or module holds.
struct Conflict {
  enum class Kind { module_name, slug };
  Kind kind;
  std::string name;
  std::string holder_module;
  std::string holder_file;  // "" when unknown (a module registered without a source)

  // The one spelling of a registration conflict, after `verb`: "waiting for" (a file of the
  // directory, PluginStatus::waiting) or "would wait for" (plugins check).
  //   waiting for module name 'billing' held by plugins/billing.so
  //   waiting for slug 'invoice' held by module 'billing' (plugins/billing.so)
  PluginError error(std::string_view verb) const;
};

// The names a file holds, as the ledger records them.
struct HeldNames {
  std::filesystem::path file;
  std::string module;
  std::vector<std::string> flows;  // slugs
};

class NameOwnership {
 public:
  // `cache_dir`: where owners.json lives (created 0700 by save() when missing). Reads nothing
  // before load().
  explicit NameOwnership(std::filesystem::path cache_dir) : cache_dir_(std::move(cache_dir)) {}
  NameOwnership(const NameOwnership&) = delete;
  NameOwnership& operator=(const NameOwnership&) = delete;

  // Reads the ledger: the incumbents of the last run and the names reserved for them.
  void load();
  // Persists who holds what for the files of the plugins directory `plugins_dir` (`held`, in
  // module name order); the entries of other directories (another configuration sharing the
  // cache) are kept. Writes nothing when the ledger would not change.
  void save(const std::filesystem::path& plugins_dir, const std::vector<HeldNames>& held) const;

  // The conflict that keeps `path` from registering `module` and `flows` because of a name
  // reserved for an incumbent of the last run that is still to be loaded in this batch.
  std::optional<Conflict> reserved_conflict(const std::string& module,
                                            const std::vector<std::string>& flows,
                                            const std::filesystem::path& path) const;

  // `present` in the order in which files claim names: incumbents, then by ctime, then by path.
  std::vector<FileChange> claim_order(std::vector<FileChange> present) const;

  // A batch being loaded: the files of `present` keep the names reserved for them until each is
  // taken from the batch (just before it loads); end_batch() forgets the rest.
  void begin_batch(const std::vector<FileChange>& present);
  void take_from_batch(const std::filesystem::path& path);
  void end_batch();

 private:
  struct Reservation {
    std::filesystem::path file;  // file_key of the incumbent
    std::string module;
  };

  std::filesystem::path owners_file() const { return cache_dir_ / "owners.json"; }
  // The ledger as a JSON object (empty when missing or unreadable).
  nlohmann::json read_owners() const;
  // The reservation of `key` ("module:NAME" or "slug:NAME") for an incumbent other than `self`
  // that is still to be loaded in this batch; nullptr when there is none.
  const Reservation* reserved_for_other(const std::string& key,
                                        const std::filesystem::path& self) const;

  std::filesystem::path cache_dir_;
  // "module:NAME" / "slug:NAME" -> its last holder.
  std::map<std::string, Reservation> reserved_;
  std::set<std::filesystem::path> incumbents_;  // the files of `reserved_`
  // file_keys of the batch being loaded, not yet loaded.
  std::set<std::filesystem::path> pending_;
};

}  // namespace flowreg::detail
