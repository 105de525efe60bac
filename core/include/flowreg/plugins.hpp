#pragma once
// Loading plugins (.so files) from a drop-in directory into a FlowRegistry.
//
// Every file goes through these stages (PluginStage), and the first that fails rejects it with its
// reason:
// clang-format off
//   file         a regular file (a symlink only when allowed), no FIFO, device or directory
//   permissions  file and directory owned by root or the running user, not writable by group or
//                others (unless allow_unsafe)
//   size, elf    at most max_bytes; an ELF shared object for this machine, every size and offset
//                in it checked against the bytes read (no code runs, nothing in the file trusted)
//   allowlist    its SHA-256 is in plugins.sha256_allowlist, when that list is not empty
//   (quarantine) its exact content has not crashed, hung or left a process behind in a loader, nor
//                crashed this host while loading (counted by a journal across restarts); a
//                quarantined file keeps the stage and reason of its quarantine
//   symbol       exports flowreg_plugin in section "flowreg" (its dynamic symbol table)
//   stage        a private read-only copy named by its hash is written to the plugin cache
//   inspect      loads in a threaded child process in its own process group first (crash, abort,
//                hang or a process left running -> quarantined by hash)
//   load, abi    dlopen (never unloaded) of the private copy; ABI magic/major/minor/size;
//                exceptions thrown through the C ABI are contained
//   definition   describes itself with valid flows (the checks and limits of YAML flows)
//   register     registers atomically. A file that declares a module name or flow slug another
//                file holds waits for it (PluginStatus::waiting) and registers as soon as the
//                holder is removed or stops declaring it. The incumbent keeps a name, across
//                restarts too (<cache_dir>/owners.json): file names and directory order never
//                decide (see PluginLoader::Impl for the rule).
// clang-format on
//
// Thread-safety: all member functions may be called concurrently; loading is serialized inside.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/config.hpp"
#include "flowreg/error.hpp"
#include "flowreg/flow_registry.hpp"

namespace flowreg {

namespace detail {
class LoadedPlugin;
}

// The stages above, in order.
enum class PluginStage {
  file,
  permissions,
  size,
  elf,
  allowlist,
  symbol,
  stage,
  inspect,
  load,
  abi,
  definition,
  registration,  // "register"
};
// The stage's name as messages, `flowreg plugins list` and quarantine records spell it ("file",
// ..., "register").
std::string_view to_string(PluginStage stage) noexcept;
// The stage spelled `name` (as to_string spells it); nullopt for any other text.
std::optional<PluginStage> plugin_stage_from_string(std::string_view name) noexcept;

// Why a plugin file was refused: an Error whose message gives the reason and what to do about it,
// and the stage that refused the file. The code is Errc::plugin, except at registration: a module
// name or slug held by another file is Errc::duplicate_module or Errc::duplicate_slug, and a
// refusal of the registry keeps the registry's code and details.
struct PluginError : Error {
  PluginStage stage = PluginStage::file;
};

inline PluginError plugin_error(PluginStage stage, std::string message, Errc code = Errc::plugin) {
  return PluginError{{code, std::move(message), {}}, stage};
}

// waiting: ready to register, but a module name or flow slug it declares is held by another file;
// `error` (stage registration) names the name and its holder.
enum class PluginStatus { loaded, rejected, quarantined, waiting };
std::string_view to_string(PluginStatus status) noexcept;

struct PluginInfo {
  std::filesystem::path file;
  std::string module;  // "" when it never got as far as describing itself
  std::string sha256;  // "" when the file could not be read
  std::string abi;     // "1.0"; "" when unknown
  std::string fingerprint;
  PluginStatus status = PluginStatus::rejected;
  std::optional<PluginError> error;   // set unless loaded
  std::vector<std::string> flows;     // slugs
  std::vector<std::string> handlers;  // "module.handler"

  // "FILE: [stage] message" for a rejected or quarantined file.
  std::string describe_error() const;
};

struct HandlerOutcome {
  enum class Status { ok, retry, permanent, snooze };
  Status status = Status::ok;
  std::string body;  // the output JSON (ok), the error message, or a snooze's delay in ms
};

// A handler of a loaded plugin. Keeps that plugin's code loaded while it exists.
class HandlerRef {
 public:
  HandlerRef() = default;
  explicit operator bool() const noexcept { return plugin_ != nullptr; }
  const std::string& name() const noexcept { return name_; }  // "module.handler"
  // Runs the handler on a JSON input; `context_json` is {"run_id", "flow", "step", "task_index",
  // "attempt"} (see flowreg/plugin_abi.h), or "" for none. Thread-safe.
  HandlerOutcome invoke(std::string_view input_json, std::string_view context_json = {}) const;
  // The same handler of the same loaded copy of its plugin (a reload gives a different one).
  bool same_code_as(const HandlerRef& other) const noexcept {
    return plugin_ == other.plugin_ && index_ == other.index_;
  }
  // Where its code lives (the private copy of its plugin that was loaded) and its number there:
  // what a handler process loads and calls (isolation: process).
  const std::filesystem::path& code_file() const noexcept;
  std::uint32_t index() const noexcept { return index_; }
  // The names of every handler of its plugin ("module.handler"), by number.
  const std::vector<std::string>& plugin_handler_names() const noexcept;

 private:
  friend class PluginLoader;
  std::shared_ptr<const detail::LoadedPlugin> plugin_;
  std::uint32_t index_ = 0;
  std::string name_;
};

struct PluginLoaderOptions {
  PluginSettings settings;          // dir, watch, allow_symlinks, allow_unsafe, ...
  std::filesystem::path cache_dir;  // private copies (0700); default: <data_dir>/plugin-cache
  // Executable that inspects a plugin in a child process (`EXE __inspect FILE`); the flowreg
  // binary. Empty: no inspection (a crashing plugin then crashes the host: tests of the loader
  // only).
  std::filesystem::path inspector;
  std::chrono::milliseconds debounce{500};  // hot drop-in: quiet time before a file is read
  std::chrono::milliseconds rescan_interval{30'000};  // hot drop-in: periodic full rescan
  // Besides root, the user plugin files and their directory may belong to; -1: the effective uid
  // of this process.
  long trusted_uid = -1;
};

class PluginLoader {
 public:
  PluginLoader(FlowRegistry& registry, PluginLoaderOptions options);
  ~PluginLoader();  // stops watching; registered modules stay registered
  PluginLoader(const PluginLoader&) = delete;
  PluginLoader& operator=(const PluginLoader&) = delete;

  // Loads every plugin of the directory (new or changed files), unregisters removed ones; returns
  // the status of every file. Errc::io when the directory itself is unusable.
  Result<std::vector<PluginInfo>> scan();
  // Starts hot drop-in: new files load, changed files reload, removed files unregister.
  Result<void> watch();
  void stop();

  // The status of every file seen, sorted by file name.
  std::vector<PluginInfo> plugins() const;
  // Would `file` load? Runs every stage but registration (against the current registry for
  // conflicts) and changes nothing.
  PluginInfo check(const std::filesystem::path& file);
  // The handler "module.handler" of the currently loaded version of that module.
  HandlerRef handler(std::string_view qualified_name) const;
  // Quarantines the plugin whose code `handler` runs (stage inspect, `reason` as its message):
  // its module is unregistered and its content is not loaded again, here or by a later process of
  // this cache directory, until the file changes. For handlers that crash their processes again
  // and again at run time (isolation: process). False when that code is no longer the loaded one.
  bool quarantine(const HandlerRef& handler, const std::string& reason);

  // Inspects `file` in this process and prints the result as one JSON object on stdout: what the
  // `__inspect` mode of the flowreg binary runs in the child. Returns the process exit code.
  static int inspect_main(const std::filesystem::path& file);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flowreg
