#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>

#include "config/definition.hpp"
#include "flowreg/plugins.hpp"
#include "plugin/directory_watcher.hpp"
#include "plugin/plugin_library.hpp"
#include "util/sha256.hpp"
#include "util/subprocess.hpp"

namespace flowreg {

namespace fs = std::filesystem;

std::string_view to_string(PluginStatus status) noexcept {
  switch (status) {
    case PluginStatus::loaded:
      return "loaded";
    case PluginStatus::rejected:
      return "rejected";
    case PluginStatus::quarantined:
      return "quarantined";
    case PluginStatus::waiting:
      return "waiting";
  }
  return "unknown";
}

std::string PluginInfo::describe_error() const {
  if (!error) return {};
  return fmt::format("{}: [{}] {}", file.string(), error->stage, error->message);
}

HandlerOutcome HandlerRef::invoke(std::string_view input_json,
                                  std::string_view context_json) const {
  return plugin_->invoke(index_, input_json, context_json);
}

namespace {

using detail::LoadedPlugin;
using nlohmann::json;

tl::unexpected<PluginError> reject(std::string stage, std::string message) {
  return tl::unexpected(PluginError{std::move(stage), std::move(message)});
}

std::string file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

// Ownership and mode rules of OpenSSH's StrictModes, for the file and its directory.
tl::expected<void, PluginError> check_safety(const fs::path& path, const struct stat& st,
                                             bool is_dir, bool allow_unsafe, uid_t me) {
  if (allow_unsafe) return {};
  const char* what = is_dir ? "plugin directory" : "plugin file";
  if (st.st_uid != 0 && st.st_uid != me)
    return reject("permissions",
                  fmt::format("{} {} is owned by uid {}, not by root or the user running flowreg "
                              "(uid {}): run `chown {} {}` (or pass --allow-unsafe-plugins)",
                              what, path.string(), st.st_uid, me, me, path.string()));
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return reject(
        "permissions",
        fmt::format("{} {} is writable by {} (mode {:04o}): run `chmod go-w {}` (or pass "
                    "--allow-unsafe-plugins)",
                    what, path.string(), (st.st_mode & S_IWOTH) ? "everyone" : "its group",
                    st.st_mode & 07777, path.string()));
  return {};
}

// The bytes of a plugin file, read once: they are hashed, checked and staged, so that what is
// loaded is exactly what was checked.
struct FileBytes {
  std::string bytes;
  std::string sha256;
};

}  // namespace

struct PluginLoader::Impl {
  struct FileRecord {
    PluginInfo info;
    std::string registered_module;    // the module this file has registered ("" if none)
    detail::FileSignature signature;  // as seen when it was last loaded
    std::uint64_t waiting_since = 0;  // its place in the queue for a held name; 0: not waiting
  };
  struct ModuleOwner {
    fs::path file;
    std::shared_ptr<const LoadedPlugin> plugin;
    std::vector<std::string> handlers;
  };

  FlowRegistry& registry;
  PluginLoaderOptions options;

  mutable std::mutex mutex;  // serializes loading; guards everything below
  std::map<fs::path, FileRecord> files;
  std::map<std::string, ModuleOwner, std::less<>> modules;
  std::map<std::string, PluginError> quarantine;  // by sha256, persisted under cache_dir
  std::unique_ptr<detail::DirectoryWatcher> watcher;

  // Ownership of module names and flow slugs contested by two files.
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
  struct Reservation {
    fs::path file;  // file_key of the incumbent
    std::string module;
  };
  std::map<std::string, Reservation> reserved;  // "module:NAME" / "slug:NAME" -> its last holder
  std::set<fs::path> incumbents;                // the files of `reserved`
  std::set<fs::path> pending;  // file_keys of the batch being loaded, not yet loaded
  std::uint64_t wait_sequence = 0;

  Impl(FlowRegistry& r, PluginLoaderOptions o) : registry(r), options(std::move(o)) {
    if (options.cache_dir.empty()) options.cache_dir = fs::path(".flowreg") / "plugin-cache";
    load_quarantine();
    load_owners();
  }

  // How a file is named in the owners ledger and compared with another: absolute, normalized and
  // with symbolic links resolved, so that a relative plugins directory, another working directory
  // or an absolute path given on the command line all name the same file the same way.
  static fs::path file_key(const fs::path& path) {
    std::error_code ec;
    fs::path key = fs::weakly_canonical(path, ec);
    if (ec) key = fs::absolute(path, ec).lexically_normal();
    return key;
  }
  static bool same_file(const fs::path& a, const fs::path& b) {
    return a == b || file_key(a) == file_key(b);
  }

  fs::path owners_file() const { return options.cache_dir / "owners.json"; }

  json read_owners() const {
    std::ifstream in(owners_file());
    if (!in) return json::object();
    json owners = json::parse(in, nullptr, /*allow_exceptions=*/false);
    return owners.is_object() ? owners : json::object();
  }

  void load_owners() {
    const json owners = read_owners();
    for (const auto& [file, names] : owners.items()) {
      if (!names.is_object() || !names.contains("module") || !names["module"].is_string()) continue;
      const std::string module = names["module"].get<std::string>();
      incumbents.insert(fs::path(file));
      reserved["module:" + module] = Reservation{fs::path(file), module};
      for (const auto& slug : names.value("flows", json::array()))
        if (slug.is_string())
          reserved["slug:" + slug.get<std::string>()] = {fs::path(file), module};
    }
  }

  // REQUIRES: mutex held. Persists who holds what for the files of this loader's directory; the
  // entries of other directories (another configuration sharing the cache) are kept.
  void save_owners() const {
    const fs::path dir = file_key(options.settings.dir);
    const json before = read_owners();
    json owners = json::object();
    for (const auto& [file, names] : before.items())
      if (file_key(fs::path(file)).parent_path() != dir) owners[file] = names;
    for (const auto& [module, owner] : modules) {
      json& names = owners[file_key(owner.file).string()];
      names["module"] = module;
      names["flows"] = json::array();
      for (const auto& flow : registry.module_flows(module))
        names["flows"].push_back(flow->def.slug);
    }
    if (owners == before) return;
    std::error_code ec;
    if (fs::create_directories(options.cache_dir, ec))
      fs::permissions(options.cache_dir, fs::perms::owner_all, fs::perm_options::replace, ec);
    const fs::path tmp = options.cache_dir / ("owners.json.tmp" + std::to_string(getpid()));
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << owners.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
      if (!out) return;
    }
    fs::rename(tmp, owners_file(), ec);
    if (ec) fs::remove(tmp, ec);
  }

  // The holder that keeps `path` from registering `module` and `flows`: the module name held by
  // another file, or a slug held by another module. REQUIRES: mutex held.
  std::optional<PluginError> held_elsewhere(const fs::path& path, const std::string& module,
                                            const std::vector<std::string>& flows) const {
    if (auto owner = modules.find(module);
        owner != modules.end() && !same_file(owner->second.file, path))
      return PluginError{"register", fmt::format("waiting for module name '{}' held by {}", module,
                                                 owner->second.file.string())};
    for (const auto& slug : flows) {
      const FlowRef existing = registry.get(slug);
      if (!existing || existing->module == module) continue;
      // A module this same file registered before (it changed its module name): not a contest.
      if (auto owner = modules.find(existing->module);
          owner != modules.end() && same_file(owner->second.file, path))
        continue;
      return PluginError{
          "register",
          fmt::format("waiting for slug '{}' held by module '{}'{}", slug, existing->module,
                      existing->source.empty() ? "" : " (" + existing->source + ")")};
    }
    // Names reserved for an incumbent of the last run that is still to be loaded.
    const fs::path self = file_key(path);
    auto reserved_for_other = [&](const std::string& key) -> const Reservation* {
      auto it = reserved.find(key);
      if (it == reserved.end() || it->second.file == self || !pending.contains(it->second.file))
        return nullptr;
      return &it->second;
    };
    if (const Reservation* r = reserved_for_other("module:" + module))
      return PluginError{"register", fmt::format("waiting for module name '{}' held by {}", module,
                                                 r->file.string())};
    for (const auto& slug : flows)
      if (const Reservation* r = reserved_for_other("slug:" + slug))
        return PluginError{"register", fmt::format("waiting for slug '{}' held by module '{}' ({})",
                                                   slug, r->module, r->file.string())};
    return std::nullopt;
  }

  fs::path quarantine_dir() const { return options.cache_dir / "quarantine"; }

  void load_quarantine() {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(quarantine_dir(), ec)) {
      std::ifstream in(entry.path());
      PluginError error;
      if (std::getline(in, error.stage) && std::getline(in, error.message))
        quarantine[entry.path().stem().string()] = error;
    }
  }

  void remember_quarantine(const std::string& sha, const PluginError& error) {
    quarantine[sha] = error;
    std::error_code ec;
    fs::create_directories(quarantine_dir(), ec);
    std::ofstream out(quarantine_dir() / (sha + ".txt"));
    out << error.stage << '\n' << error.message << '\n';
  }

  // Stages: file, permissions, size, elf, allowlist. No plugin code runs.
  tl::expected<FileBytes, PluginError> read_checked(const fs::path& path) const {
    const PluginSettings& s = options.settings;
    struct stat lst {};
    if (lstat(path.c_str(), &lst) != 0) return reject("file", "cannot be read: no such file");
    struct stat st = lst;
    if (S_ISLNK(lst.st_mode)) {
      if (!s.allow_symlinks)
        return reject("file",
                      "is a symbolic link; plugins must be regular files (set "
                      "plugins.allow_symlinks: true to accept links)");
      if (stat(path.c_str(), &st) != 0) return reject("file", "is a dangling symbolic link");
    }
    if (!S_ISREG(st.st_mode))
      return reject("file",
                    fmt::format("is {}; plugins must be regular files", file_kind(st.st_mode)));
    struct stat dst {};
    const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    if (stat(dir.c_str(), &dst) != 0) return reject("file", "its directory cannot be read");
    const uid_t me = options.trusted_uid >= 0 ? static_cast<uid_t>(options.trusted_uid) : geteuid();
    if (auto ok = check_safety(dir, dst, true, s.allow_unsafe, me); !ok)
      return tl::unexpected(ok.error());
    if (auto ok = check_safety(path, st, false, s.allow_unsafe, me); !ok)
      return tl::unexpected(ok.error());
    if (static_cast<std::uint64_t>(st.st_size) > s.max_bytes)
      return reject("size", fmt::format("is {} bytes; the limit (plugins.max_bytes) is {}",
                                        st.st_size, s.max_bytes));
    // O_NONBLOCK: never block on something that turned into a FIFO since the stat.
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return reject("file", fmt::format("cannot be opened: {}", std::strerror(errno)));
    FileBytes file;
    struct stat fst {};
    if (fstat(fd, &fst) != 0 || !S_ISREG(fst.st_mode)) {
      close(fd);
      return reject("file", "changed while being opened");
    }
    file.bytes.resize(static_cast<std::size_t>(
        std::min<std::uint64_t>(static_cast<std::uint64_t>(fst.st_size), s.max_bytes + 1)));
    std::size_t got = 0;
    while (got < file.bytes.size()) {
      const ssize_t n = read(fd, file.bytes.data() + got, file.bytes.size() - got);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    close(fd);
    file.bytes.resize(got);
    if (file.bytes.size() > s.max_bytes)
      return reject("size",
                    fmt::format("is over the limit (plugins.max_bytes) of {} bytes", s.max_bytes));
    if (file.bytes.size() < 4 || file.bytes.compare(0, 4,
                                                    "\x7f"
                                                    "ELF") != 0)
      return reject("elf", "is not an ELF file (no ELF magic at its start)");
    file.sha256 = detail::sha256_hex(file.bytes);
    if (!s.sha256_allowlist.empty() &&
        std::find(s.sha256_allowlist.begin(), s.sha256_allowlist.end(), file.sha256) ==
            s.sha256_allowlist.end())
      return reject(
          "allowlist",
          fmt::format("has SHA-256 {}, which is not in plugins.sha256_allowlist", file.sha256));
    return file;
  }

  // A private, read-only copy named by content hash: a later write to the original can neither
  // change nor crash what is loaded, and a changed file gets a new path (dlopen caches by path).
  tl::expected<fs::path, PluginError> stage(const FileBytes& file) const {
    std::error_code ec;
    fs::create_directories(options.cache_dir, ec);
    if (ec)
      return reject("stage", fmt::format("cannot create the plugin cache {}: {}",
                                         options.cache_dir.string(), ec.message()));
    fs::permissions(options.cache_dir, fs::perms::owner_all, fs::perm_options::replace, ec);
    const fs::path target = options.cache_dir / (file.sha256 + ".so");
    if (fs::exists(target, ec)) {
      auto sha = detail::sha256_file_hex(target);
      if (sha && *sha == file.sha256) return target;
      fs::permissions(target, fs::perms::owner_write, fs::perm_options::add, ec);
      fs::remove(target, ec);
    }
    const fs::path tmp = options.cache_dir / (file.sha256 + ".tmp" + std::to_string(getpid()));
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(file.bytes.data(), static_cast<std::streamsize>(file.bytes.size()));
      if (!out) return reject("stage", fmt::format("cannot write {}", tmp.string()));
    }
    fs::permissions(tmp, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read,
                    fs::perm_options::replace, ec);
    fs::rename(tmp, target, ec);
    if (ec)
      return reject("stage", fmt::format("cannot stage {}: {}", target.string(), ec.message()));
    return target;
  }

  // Loads the staged copy in a child process first. A crash, abort, or hang is a quarantine.
  tl::expected<void, PluginError> inspect(const fs::path& staged, bool& quarantined) const {
    quarantined = false;
    if (options.inspector.empty()) return {};
    const auto result = detail::run_subprocess(
        {options.inspector.string(), "__inspect", staged.string()}, options.settings.scan_timeout);
    if (!result.started)
      return reject("inspect", fmt::format("cannot run the inspector {}: {}",
                                           options.inspector.string(), result.error));
    if (result.timed_out) {
      quarantined = true;
      return reject("inspect", fmt::format("did not finish loading within {} ms in the inspection "
                                           "process (a hang in a static initializer or the entry "
                                           "point?); quarantined until the file changes",
                                           options.settings.scan_timeout.count()));
    }
    const json answer = json::parse(result.out, nullptr, false);
    if (result.signal != 0 || result.exit_code != 0 || answer.is_discarded() ||
        !answer.is_object()) {
      quarantined = true;
      std::string err = result.err.substr(0, 400);
      while (!err.empty() && err.back() == '\n') err.pop_back();
      return reject("inspect", fmt::format("crashed the inspection process while loading: it {}{}; "
                                           "quarantined until the file changes",
                                           result.describe_end(),
                                           err.empty() ? "" : " (stderr: " + err + ")"));
    }
    if (!answer.value("ok", false))
      return reject(answer.value("stage", "inspect"), answer.value("message", "rejected"));
    return {};
  }

  // Every stage for `path`, up to a loaded plugin and its checked definition. Registers nothing.
  struct Prepared {
    std::shared_ptr<LoadedPlugin> plugin;
    detail::PluginDefinition definition;
  };
  tl::expected<Prepared, PluginError> prepare(const fs::path& path, PluginInfo& info) {
    auto file = read_checked(path);
    if (!file) return tl::unexpected(file.error());
    info.sha256 = file->sha256;
    if (auto q = quarantine.find(file->sha256); q != quarantine.end()) {
      info.status = PluginStatus::quarantined;
      return tl::unexpected(q->second);
    }
    auto staged = stage(*file);
    if (!staged) return tl::unexpected(staged.error());
    if (auto exports = detail::check_exports(*staged); !exports)
      return tl::unexpected(exports.error());
    bool quarantined = false;
    if (auto inspected = inspect(*staged, quarantined); !inspected) {
      if (quarantined) {
        info.status = PluginStatus::quarantined;
        remember_quarantine(file->sha256, inspected.error());
      }
      return tl::unexpected(inspected.error());
    }
    return load_in_process(*staged, path.string(), info);
  }

  static tl::expected<Prepared, PluginError> load_in_process(const fs::path& staged,
                                                             const std::string& source,
                                                             PluginInfo& info) {
    auto plugin = LoadedPlugin::open(staged);
    if (!plugin) return tl::unexpected(plugin.error());
    info.abi = (*plugin)->abi();
    info.fingerprint = (*plugin)->fingerprint();
    auto definition = detail::parse_plugin_definition((*plugin)->definition(), source);
    if (!definition) {
      std::string message = "its definition is invalid:";
      for (const auto& d : definition.error()) message += " " + d.message + ";";
      message.pop_back();
      return reject("definition", std::move(message));
    }
    info.module = definition->module;
    for (const auto& f : definition->flows) info.flows.push_back(f.slug);
    for (const auto& h : definition->handlers)
      info.handlers.push_back(definition->module + "." + h);
    return Prepared{std::move(*plugin), std::move(*definition)};
  }

  // Loads (or reloads) one file and registers its module. REQUIRES: mutex held.
  void load(const fs::path& path) {
    FileRecord& record = files[path];
    PluginInfo info;
    info.file = path;
    auto prepared = prepare(path, info);
    bool waiting = false;
    if (prepared) {
      auto registered = register_prepared(path, record, *prepared, waiting);
      if (!registered) prepared = tl::unexpected(registered.error());
    }
    if (waiting) {
      if (record.waiting_since == 0) record.waiting_since = ++wait_sequence;
    } else {
      record.waiting_since = 0;
    }
    if (!prepared) {
      if (waiting)
        info.status = PluginStatus::waiting;
      else if (info.status != PluginStatus::quarantined)
        info.status = PluginStatus::rejected;
      info.error = prepared.error();
      if (!record.registered_module.empty())
        info.error->message += fmt::format(
            " (the previously loaded version of module '{}' stays "
            "registered)",
            record.registered_module);
      spdlog::warn("plugin {}", info.describe_error());
    } else {
      info.status = PluginStatus::loaded;
      spdlog::info("plugin {}: loaded module '{}' ({} flows)", path.string(), info.module,
                   info.flows.size());
    }
    record.info = std::move(info);
  }

  // `waiting` is set when another file holds the module name or a slug (see held_elsewhere).
  tl::expected<void, PluginError> register_prepared(const fs::path& path, FileRecord& record,
                                                    Prepared& prepared, bool& waiting) {
    const std::string& module = prepared.definition.module;
    std::vector<std::string> slugs;
    for (const auto& flow : prepared.definition.flows) slugs.push_back(flow.slug);
    if (auto held = held_elsewhere(path, module, slugs)) {
      waiting = true;
      return tl::unexpected(std::move(*held));
    }
    const bool reload = record.registered_module == module;
    Module m{module, path.string(), std::move(prepared.definition.flows), prepared.plugin};
    auto result = reload ? registry.replace_module(std::move(m), "plugin file changed")
                         : registry.register_module(std::move(m), "plugin file loaded");
    if (!result) return reject("register", result.error().message);
    if (!record.registered_module.empty() && !reload) {
      // The file now declares another module: the old one goes.
      (void)registry.unregister_module(record.registered_module, "plugin file changed its module");
      modules.erase(record.registered_module);
    }
    record.registered_module = module;
    modules[module] = ModuleOwner{path, prepared.plugin, prepared.definition.handlers};
    return {};
  }

  // REQUIRES: mutex held.
  void remove(const fs::path& path) {
    auto it = files.find(path);
    if (it == files.end()) return;
    if (!it->second.registered_module.empty()) {
      (void)registry.unregister_module(it->second.registered_module, "plugin file removed");
      modules.erase(it->second.registered_module);
      spdlog::info("plugin {}: removed; module '{}' unregistered", path.string(),
                   it->second.registered_module);
    }
    files.erase(it);
  }

  // REQUIRES: mutex held.
  // The watcher's first batch holds every file present, and a rescan may report files that did
  // not change: a file already loaded with the same content stays as it is. Removals go first
  // (they free names), then the incumbents of the last run, then the other files oldest first
  // (see `incumbents`); names freed on the way go to the files waiting for them.
  void apply(const std::vector<detail::FileChange>& changes) {
    std::vector<detail::FileChange> present;
    for (const auto& change : changes) {
      if (change.kind == detail::FileChange::Kind::removed)
        remove(change.path);
      else
        present.push_back(change);
    }
    load_all(claim_order(std::move(present)));
    settle();
  }

  // Loads `present` in that order; the files of the batch still to be loaded keep the names
  // reserved for them (see `reserved`). REQUIRES: mutex held.
  void load_all(const std::vector<detail::FileChange>& present) {
    for (const auto& change : present) pending.insert(file_key(change.path));
    for (const auto& change : present) {
      pending.erase(file_key(change.path));
      load_changed(change);
    }
    pending.clear();
  }

  // `present` in the order in which files claim names: incumbents, then by ctime, then by path.
  std::vector<detail::FileChange> claim_order(std::vector<detail::FileChange> present) const {
    struct Keyed {
      bool newcomer;
      std::int64_t ctime_ns;
      detail::FileChange change;
    };
    std::vector<Keyed> keyed;
    for (auto& change : present) {
      struct stat st {};
      const std::int64_t ctime_ns =
          stat(change.path.c_str(), &st) == 0
              ? static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec
              : 0;
      const bool newcomer = !incumbents.contains(file_key(change.path));
      keyed.push_back(Keyed{newcomer, ctime_ns, std::move(change)});
    }
    std::stable_sort(keyed.begin(), keyed.end(), [](const Keyed& a, const Keyed& b) {
      return std::tie(a.newcomer, a.ctime_ns, a.change.path) <
             std::tie(b.newcomer, b.ctime_ns, b.change.path);
    });
    std::vector<detail::FileChange> out;
    for (auto& k : keyed) out.push_back(std::move(k.change));
    return out;
  }

  // REQUIRES: mutex held. Gives names that are free now to the files waiting for them, longest
  // waiting first, then persists who holds what.
  void settle() {
    for (bool progress = true; progress;) {
      progress = false;
      std::vector<std::pair<std::uint64_t, fs::path>> queue;
      for (const auto& [path, record] : files)
        if (record.info.status == PluginStatus::waiting)
          queue.emplace_back(record.waiting_since, path);
      std::sort(queue.begin(), queue.end());
      for (const auto& [since, path] : queue) {
        const PluginInfo& info = files[path].info;
        if (held_elsewhere(path, info.module, info.flows)) continue;
        load(path);
        if (files[path].info.status == PluginStatus::loaded) progress = true;
      }
    }
    save_owners();
  }

  // Loads a file reported present, unless it is loaded already with the same content, mode and
  // owner (whether it may load depends on those too).
  void load_changed(const detail::FileChange& change) {
    if (auto it = files.find(change.path); it != files.end() &&
                                           it->second.info.status == PluginStatus::loaded &&
                                           it->second.signature.mode == change.signature.mode &&
                                           it->second.signature.uid == change.signature.uid) {
      auto sha = detail::sha256_file_hex(change.path);
      if (sha && *sha == it->second.info.sha256) return;
    }
    load(change.path);
    if (auto it = files.find(change.path); it != files.end())
      it->second.signature = change.signature;
  }

  detail::WatchOptions watch_options() const {
    detail::WatchOptions w;
    w.debounce = options.debounce;
    w.rescan_interval = options.rescan_interval;
    return w;
  }
};

PluginLoader::PluginLoader(FlowRegistry& registry, PluginLoaderOptions options)
    : impl_(std::make_unique<Impl>(registry, std::move(options))) {}

PluginLoader::~PluginLoader() { stop(); }

Result<std::vector<PluginInfo>> PluginLoader::scan() {
  const fs::path& dir = impl_->options.settings.dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return make_error(Errc::io, fmt::format("plugins directory {} does not exist or is not a "
                                            "directory",
                                            dir.string()));
  const auto present = detail::scan_directory(dir, impl_->watch_options());
  std::lock_guard lock(impl_->mutex);
  std::set<fs::path> seen;
  for (const auto& change : present) seen.insert(change.path);
  impl_->load_all(impl_->claim_order(present));
  std::vector<fs::path> gone;
  for (const auto& [path, record] : impl_->files)
    if (!seen.contains(path)) gone.push_back(path);
  for (const auto& path : gone) impl_->remove(path);
  impl_->settle();
  std::vector<PluginInfo> out;
  for (const auto& [path, record] : impl_->files) out.push_back(record.info);
  return out;
}

Result<void> PluginLoader::watch() {
  std::lock_guard lock(impl_->mutex);
  if (impl_->watcher) return {};
  impl_->watcher = std::make_unique<detail::DirectoryWatcher>(
      impl_->options.settings.dir, impl_->watch_options(),
      [impl = impl_.get()](const std::vector<detail::FileChange>& changes) {
        std::lock_guard inner(impl->mutex);
        impl->apply(changes);
      });
  auto started = impl_->watcher->start();
  if (!started) impl_->watcher.reset();
  return started;
}

void PluginLoader::stop() {
  std::unique_ptr<detail::DirectoryWatcher> watcher;
  {
    std::lock_guard lock(impl_->mutex);
    watcher = std::move(impl_->watcher);
  }
  if (watcher) watcher->stop();  // outside the lock: its callback takes it
}

std::vector<PluginInfo> PluginLoader::plugins() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<PluginInfo> out;
  for (const auto& [path, record] : impl_->files) out.push_back(record.info);
  return out;
}

PluginInfo PluginLoader::check(const fs::path& file) {
  std::lock_guard lock(impl_->mutex);
  PluginInfo info;
  info.file = file;
  auto prepared = impl_->prepare(file, info);
  if (prepared) {
    // Would registration succeed? Conflicts with modules and slugs registered from other files.
    // Paths are compared as files (file_key): `file` may be the same file as a registered one named
    // through a relative plugins directory, and then it does not conflict with itself.
    const std::string& module = prepared->definition.module;
    if (auto owner = impl_->modules.find(module);
        owner != impl_->modules.end() && !Impl::same_file(owner->second.file, file)) {
      prepared = reject("register", fmt::format("declares module '{}', which {} already registered",
                                                module, owner->second.file.string()));
    } else {
      for (const auto& flow : prepared->definition.flows) {
        const RegisteredFlow* existing = impl_->registry.find(flow.slug);
        if (existing && existing->module != module) {
          prepared =
              reject("register",
                     fmt::format("flow slug '{}' is already registered by module '{}'{}", flow.slug,
                                 existing->module,
                                 existing->source.empty() ? "" : " (" + existing->source + ")"));
          break;
        }
      }
    }
  }
  if (prepared) {
    info.status = PluginStatus::loaded;
  } else {
    if (info.status != PluginStatus::quarantined) info.status = PluginStatus::rejected;
    info.error = prepared.error();
  }
  return info;
}

HandlerRef PluginLoader::handler(std::string_view qualified_name) const {
  const auto dot = qualified_name.find('.');
  if (dot == std::string_view::npos) return {};
  std::lock_guard lock(impl_->mutex);
  auto owner = impl_->modules.find(qualified_name.substr(0, dot));
  if (owner == impl_->modules.end()) return {};
  const auto& handlers = owner->second.handlers;
  auto it = std::find(handlers.begin(), handlers.end(), qualified_name.substr(dot + 1));
  if (it == handlers.end()) return {};
  HandlerRef ref;
  ref.plugin_ = owner->second.plugin;
  ref.index_ = static_cast<std::uint32_t>(it - handlers.begin());
  ref.name_ = std::string(qualified_name);
  return ref;
}

int PluginLoader::inspect_main(const fs::path& file) {
  PluginInfo info;
  auto prepared = detail::check_exports(file).and_then(
      [&]() { return Impl::load_in_process(file, file.string(), info); });
  json out;
  if (prepared) {
    out = {{"ok", true},          {"module", info.module},
           {"abi", info.abi},     {"fingerprint", info.fingerprint},
           {"flows", info.flows}, {"handlers", info.handlers}};
  } else {
    out = {{"ok", false}, {"stage", prepared.error().stage}, {"message", prepared.error().message}};
  }
  std::fputs(out.dump().c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace flowreg
