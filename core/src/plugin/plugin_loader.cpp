#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>

#include "config/definition.hpp"
#include "flowreg/plugins.hpp"
#include "flowreg/thread_annotations.hpp"
#include "metrics/metrics.hpp"
#include "plugin/directory_watcher.hpp"
#include "plugin/elf_reader.hpp"
#include "plugin/plugin_library.hpp"
#include "util/crash_journal.hpp"
#include "util/enum_names.hpp"
#include "util/json_text.hpp"
#include "util/sha256.hpp"
#include "util/strings.hpp"
#include "util/subprocess.hpp"

namespace flowreg {

namespace fs = std::filesystem;

std::string_view to_string(PluginStatus status) noexcept {
  static constexpr detail::EnumName<PluginStatus> kNames[] = {
      {PluginStatus::loaded, "loaded"},
      {PluginStatus::rejected, "rejected"},
      {PluginStatus::quarantined, "quarantined"},
      {PluginStatus::waiting, "waiting"}};
  return detail::name_in(kNames, status);
}

namespace {

// Each stage and its name, in stage order: the one table behind to_string and its inverse.
constexpr detail::EnumName<PluginStage> kStageNames[] = {
    {PluginStage::file, "file"},
    {PluginStage::permissions, "permissions"},
    {PluginStage::size, "size"},
    {PluginStage::elf, "elf"},
    {PluginStage::allowlist, "allowlist"},
    {PluginStage::symbol, "symbol"},
    {PluginStage::stage, "stage"},
    {PluginStage::inspect, "inspect"},
    {PluginStage::load, "load"},
    {PluginStage::abi, "abi"},
    {PluginStage::definition, "definition"},
    {PluginStage::registration, "register"},
};

}  // namespace

std::string_view to_string(PluginStage stage) noexcept {
  return detail::name_in(kStageNames, stage);
}

std::optional<PluginStage> plugin_stage_from_string(std::string_view name) noexcept {
  return detail::value_in(kStageNames, name);
}

std::string PluginInfo::describe_error() const {
  if (!error) return {};
  return fmt::format("{}: [{}] {}", file.string(), to_string(error->stage), error->message);
}

HandlerOutcome HandlerRef::invoke(std::string_view input_json,
                                  std::string_view context_json) const {
  return plugin_->invoke(index_, input_json, context_json);
}

namespace {

using detail::LoadedPlugin;
using nlohmann::json;

tl::unexpected<PluginError> reject(PluginStage stage, std::string message) {
  return tl::unexpected(plugin_error(stage, std::move(message)));
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

// The file and its directory must be owned by root or the trusted user and not be writable by
// group or others: whoever can write them can run code in this process.
tl::expected<void, PluginError> check_safety(const fs::path& path, const struct stat& st,
                                             bool is_dir, bool allow_unsafe, uid_t me) {
  if (allow_unsafe) return {};
  const char* what = is_dir ? "plugin directory" : "plugin file";
  if (st.st_uid != 0 && st.st_uid != me)
    return reject(PluginStage::permissions,
                  fmt::format("{} {} is owned by uid {}, not by root or the user running flowreg "
                              "(uid {}): run `chown {} {}` (or pass --allow-unsafe-plugins)",
                              what, path.string(), st.st_uid, me, me, path.string()));
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return reject(
        PluginStage::permissions,
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
  detail::ElfFacts elf;
};

// An open file descriptor, closed by the destructor. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset() noexcept {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A staged copy in the plugin cache, and a descriptor of it holding a shared flock: the cache is
// pruned of copies nobody holds (see prune_cache), in any process sharing the cache.
struct StagedCopy {
  fs::path path;
  UniqueFd lock;
};

// Same file (device and inode) behind the descriptor and the path.
bool fd_is_path(int fd, const fs::path& path) {
  struct stat by_fd {
  }, by_path{};
  return fstat(fd, &by_fd) == 0 && stat(path.c_str(), &by_path) == 0 &&
         by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

// A quarantined content: why, and for a hang, the time it was given (a longer plugins.scan_timeout
// gives it another chance).
struct QuarantineRecord {
  PluginError error;
  std::optional<long long> timeout_ms;
};

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
  PluginError error(std::string_view verb) const {
    if (kind == Kind::module_name)
      return plugin_error(PluginStage::registration,
                          fmt::format("{} module name '{}' held by {}", verb, name, holder_file),
                          Errc::duplicate_module);
    return plugin_error(PluginStage::registration,
                        fmt::format("{} slug '{}' held by module '{}'{}", verb, name, holder_module,
                                    holder_file.empty() ? "" : " (" + holder_file + ")"),
                        Errc::duplicate_slug);
  }
};

// A quarantine record's error from its stored stage and message. A stage this version does not
// know keeps the record (as an inspection's): the content stays quarantined.
PluginError quarantined_at(std::string_view stage, std::string message) {
  return plugin_error(plugin_stage_from_string(stage).value_or(PluginStage::inspect),
                      std::move(message));
}

// Loads that crashed the process (orphaned journal records) quarantine the content after this
// many.
constexpr std::size_t kMaxLoadCrashes = 2;

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

  // PluginLoaderOptions is set in the constructor and then only read.
  mutable detail::AnnotatedMutex mutex;  // serializes loading
  std::map<fs::path, FileRecord> files FLOWREG_GUARDED_BY(mutex);
  std::map<std::string, ModuleOwner, std::less<>> modules FLOWREG_GUARDED_BY(mutex);
  // By sha256, persisted under cache_dir.
  std::map<std::string, QuarantineRecord> quarantine FLOWREG_GUARDED_BY(mutex);
  std::unique_ptr<detail::DirectoryWatcher> watcher FLOWREG_GUARDED_BY(mutex);
  // Records a load in this process before it starts and clears it after: a record left behind
  // means this process died while loading (see CrashJournal).
  detail::CrashJournal journal;

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
  // "module:NAME" / "slug:NAME" -> its last holder.
  std::map<std::string, Reservation> reserved FLOWREG_GUARDED_BY(mutex);
  std::set<fs::path> incumbents FLOWREG_GUARDED_BY(mutex);  // the files of `reserved`
  // file_keys of the batch being loaded, not yet loaded.
  std::set<fs::path> pending FLOWREG_GUARDED_BY(mutex);
  std::uint64_t wait_sequence FLOWREG_GUARDED_BY(mutex) = 0;

  Impl(FlowRegistry& r, PluginLoaderOptions o)
      : registry(r),
        options(std::move(o)),
        journal((options.cache_dir.empty() ? fs::path(".flowreg") / "plugin-cache"
                                           : options.cache_dir) /
                "journal") {
    if (options.cache_dir.empty()) options.cache_dir = fs::path(".flowreg") / "plugin-cache";
    detail::MutexLock lock(mutex);
    load_quarantine();
    count_load_crashes();
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
    json owners = detail::parse_state_file(owners_file());
    if (!owners.is_object()) return json::object();
    return owners;
  }

  void load_owners() FLOWREG_REQUIRES(mutex) {
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

  // Persists who holds what for the files of this loader's directory; the
  // entries of other directories (another configuration sharing the cache) are kept.
  void save_owners() const FLOWREG_REQUIRES(mutex) {
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
  // another file, or a slug held by another module.
  std::optional<Conflict> held_elsewhere(const fs::path& path, const std::string& module,
                                         const std::vector<std::string>& flows) const
      FLOWREG_REQUIRES(mutex) {
    if (auto owner = modules.find(module);
        owner != modules.end() && !same_file(owner->second.file, path))
      return Conflict{Conflict::Kind::module_name, module, module, owner->second.file.string()};
    for (const auto& slug : flows) {
      const FlowRef existing = registry.get(slug);
      if (!existing || existing->module == module) continue;
      // A module this same file registered before (it changed its module name): not a contest.
      if (auto owner = modules.find(existing->module);
          owner != modules.end() && same_file(owner->second.file, path))
        continue;
      return Conflict{Conflict::Kind::slug, slug, existing->module, existing->source};
    }
    // Names reserved for an incumbent of the last run that is still to be loaded.
    const fs::path self = file_key(path);
    if (const Reservation* r = reserved_for_other("module:" + module, self))
      return Conflict{Conflict::Kind::module_name, module, r->module, r->file.string()};
    for (const auto& slug : flows)
      if (const Reservation* r = reserved_for_other("slug:" + slug, self))
        return Conflict{Conflict::Kind::slug, slug, r->module, r->file.string()};
    return std::nullopt;
  }

  // The reservation of `key` ("module:NAME" or "slug:NAME") for an incumbent other than `self`
  // that is still to be loaded in this batch; nullptr when there is none.
  const Reservation* reserved_for_other(const std::string& key, const fs::path& self) const
      FLOWREG_REQUIRES(mutex) {
    auto it = reserved.find(key);
    if (it == reserved.end() || it->second.file == self || !pending.contains(it->second.file))
      return nullptr;
    return &it->second;
  }

  fs::path quarantine_dir() const { return options.cache_dir / "quarantine"; }
  fs::path crashes_dir(const std::string& sha) const { return options.cache_dir / "crashes" / sha; }

  // Records are JSON ({"stage", "message", "timeout_ms"?}): the message is kept whole, also when
  // it spans lines (a crash report with the child's stderr). Records of older versions are text,
  // the stage on the first line and the message after it.
  void load_quarantine() FLOWREG_REQUIRES(mutex) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(quarantine_dir(), ec)) {
      const std::string sha = entry.path().stem().string();
      std::ifstream in(entry.path());
      std::stringstream text;
      text << in.rdbuf();
      if (entry.path().extension() == ".json") {
        const json record = detail::parse_state_file_text(text.str());
        if (!record.is_object() || !record.contains("stage") || !record["stage"].is_string() ||
            !record.contains("message") || !record["message"].is_string())
          continue;
        QuarantineRecord q{quarantined_at(record["stage"].get<std::string>(),
                                          detail::utf8_valid(record["message"].get<std::string>())),
                           std::nullopt};
        if (auto t = record.find("timeout_ms"); t != record.end() && t->is_number_integer())
          q.timeout_ms = t->get<long long>();
        quarantine[sha] = std::move(q);
      } else if (entry.path().extension() == ".txt" && !quarantine.contains(sha)) {
        const std::string all = text.str();
        const auto eol = all.find('\n');
        if (eol == std::string::npos) continue;
        std::string message = all.substr(eol + 1);
        while (!message.empty() && message.back() == '\n') message.pop_back();
        if (message.empty()) continue;
        QuarantineRecord q{quarantined_at(all.substr(0, eol), detail::utf8_valid(message)),
                           std::nullopt};
        // A hang recorded by an older version names its time limit only in the message.
        long long ms = 0;
        if (const auto at = message.find("did not finish loading within ");
            at != std::string::npos &&
            std::sscanf(message.c_str() + at, "did not finish loading within %lld ms", &ms) == 1)
          q.timeout_ms = ms;
        quarantine[sha] = std::move(q);
      }
    }
  }

  void remember_quarantine(const std::string& sha, const PluginError& error,
                           std::optional<long long> timeout_ms = std::nullopt)
      FLOWREG_REQUIRES(mutex) {
    quarantine[sha] = {error, timeout_ms};
    std::error_code ec;
    fs::create_directories(quarantine_dir(), ec);
    json record = {{"stage", to_string(error.stage)}, {"message", error.message}};
    if (timeout_ms) record["timeout_ms"] = *timeout_ms;
    const fs::path target = quarantine_dir() / (sha + ".json");
    const fs::path tmp = quarantine_dir() / (sha + ".json.tmp" + std::to_string(getpid()));
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << record.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
    }
    fs::rename(tmp, target, ec);
    fs::remove(quarantine_dir() / (sha + ".txt"), ec);  // an older record of the same content
  }

  void forget_quarantine(const std::string& sha) FLOWREG_REQUIRES(mutex) {
    quarantine.erase(sha);
    std::error_code ec;
    fs::remove(quarantine_dir() / (sha + ".json"), ec);
    fs::remove(quarantine_dir() / (sha + ".txt"), ec);
  }

  // Loads that a process did not survive: each orphaned journal record counts one crash against
  // the content it was loading (a file per crash under crashes/<sha256>/, so that processes
  // counting at the same time never lose one). After kMaxLoadCrashes in a row (a load that
  // succeeds clears the count) the content is quarantined until the file changes.
  void count_load_crashes() FLOWREG_REQUIRES(mutex) {
    for (auto& orphan : journal.collect_orphans()) {
      const json& r = orphan.record;
      if (r.value("kind", "") != "plugin-load" || !r.contains("sha256") || !r["sha256"].is_string())
        continue;
      const std::string sha = r["sha256"].get<std::string>();
      if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos)
        continue;
      std::error_code ec;
      fs::create_directories(crashes_dir(sha), ec);
      std::ofstream(crashes_dir(sha) / (orphan.id + ".json"))
          << r.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
      spdlog::warn("plugin {}: a flowreg process (pid {}) died while loading it",
                   r.value("file", sha), r.value("pid", 0L));
    }
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(options.cache_dir / "crashes", ec)) {
      const std::string sha = entry.path().filename().string();
      if (quarantine.contains(sha)) continue;
      const std::size_t crashes = load_crashes(sha);
      if (crashes >= kMaxLoadCrashes)
        remember_quarantine(
            sha,
            plugin_error(PluginStage::load, fmt::format("crashed flowreg while loading ({} times); "
                                                        "quarantined until the file changes",
                                                        crashes)));
    }
  }

  std::size_t load_crashes(const std::string& sha) const {
    std::size_t n = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(crashes_dir(sha), ec)) {
      (void)entry;
      ++n;
    }
    return n;
  }

  // Stages: file, permissions, size, elf, allowlist. No plugin code runs.
  // `sha256` is set as soon as the bytes are read, also when a later stage rejects them.
  tl::expected<FileBytes, PluginError> read_checked(const fs::path& path,
                                                    std::string& sha256) const {
    const PluginSettings& s = options.settings;
    struct stat lst {};
    if (lstat(path.c_str(), &lst) != 0)
      return reject(PluginStage::file, "cannot be read: no such file");
    struct stat st = lst;
    if (S_ISLNK(lst.st_mode)) {
      if (!s.allow_symlinks)
        return reject(PluginStage::file,
                      "is a symbolic link; plugins must be regular files (set "
                      "plugins.allow_symlinks: true to accept links)");
      if (stat(path.c_str(), &st) != 0)
        return reject(PluginStage::file, "is a dangling symbolic link");
    }
    if (!S_ISREG(st.st_mode))
      return reject(PluginStage::file,
                    fmt::format("is {}; plugins must be regular files", file_kind(st.st_mode)));
    struct stat dst {};
    const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    if (stat(dir.c_str(), &dst) != 0)
      return reject(PluginStage::file, "its directory cannot be read");
    const uid_t me = options.trusted_uid >= 0 ? static_cast<uid_t>(options.trusted_uid) : geteuid();
    if (auto ok = check_safety(dir, dst, true, s.allow_unsafe, me); !ok)
      return tl::unexpected(ok.error());
    if (auto ok = check_safety(path, st, false, s.allow_unsafe, me); !ok)
      return tl::unexpected(ok.error());
    if (static_cast<std::uint64_t>(st.st_size) > s.max_bytes)
      return reject(
          PluginStage::size,
          fmt::format("is {} bytes; the limit (plugins.max_bytes) is {}", st.st_size, s.max_bytes));
    // O_NONBLOCK: never block on something that turned into a FIFO since the stat.
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
      return reject(PluginStage::file, fmt::format("cannot be opened: {}", std::strerror(errno)));
    FileBytes file;
    struct stat fst {};
    if (fstat(fd, &fst) != 0 || !S_ISREG(fst.st_mode)) {
      close(fd);
      return reject(PluginStage::file, "changed while being opened");
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
      return reject(PluginStage::size,
                    fmt::format("is over the limit (plugins.max_bytes) of {} bytes", s.max_bytes));
    file.sha256 = sha256 = detail::sha256_hex(file.bytes);
    // A bounds-checked reader, in this process: nothing here trusts a size or an offset of the
    // file (elf_reader.hpp).
    auto elf = detail::inspect_elf(file.bytes);
    if (!elf) return tl::unexpected(elf.error());
    file.elf = *elf;
    if (!s.sha256_allowlist.empty() &&
        std::find(s.sha256_allowlist.begin(), s.sha256_allowlist.end(), file.sha256) ==
            s.sha256_allowlist.end())
      return reject(
          PluginStage::allowlist,
          fmt::format("has SHA-256 {}, which is not in plugins.sha256_allowlist", file.sha256));
    return file;
  }

  // A private, read-only copy named by content hash: a later write to the original can neither
  // change nor crash what is loaded, and a changed file gets a new path (dlopen caches by path).
  // The copy comes back locked (a shared flock) so that no process prunes it while it is used.
  tl::expected<StagedCopy, PluginError> stage(const FileBytes& file) const {
    std::error_code ec;
    fs::create_directories(options.cache_dir, ec);
    if (ec)
      return reject(PluginStage::stage, fmt::format("cannot create the plugin cache {}: {}",
                                                    options.cache_dir.string(), ec.message()));
    fs::permissions(options.cache_dir, fs::perms::owner_all, fs::perm_options::replace, ec);
    const fs::path target = options.cache_dir / (file.sha256 + ".so");
    if (UniqueFd fd(open(target.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)); fd.get() >= 0) {
      // Locked, then checked to be still the file of that name (a pruner may have removed it
      // between the open and the lock) and still that content.
      flock(fd.get(), LOCK_SH);
      if (fd_is_path(fd.get(), target)) {
        auto sha = detail::sha256_file_hex(target);
        if (sha && *sha == file.sha256) return StagedCopy{target, std::move(fd)};
        fs::permissions(target, fs::perms::owner_write, fs::perm_options::add, ec);
        fs::remove(target, ec);
      }
    }
    const fs::path tmp = options.cache_dir / (file.sha256 + ".tmp" + std::to_string(getpid()));
    UniqueFd out(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (out.get() < 0)
      return reject(PluginStage::stage,
                    fmt::format("cannot write {}: {}", tmp.string(), std::strerror(errno)));
    flock(out.get(), LOCK_SH);  // held from creation on: never pruned half-written
    std::size_t written = 0;
    while (written < file.bytes.size()) {
      const ssize_t n = write(out.get(), file.bytes.data() + written, file.bytes.size() - written);
      if (n <= 0) {
        fs::remove(tmp, ec);
        return reject(PluginStage::stage, fmt::format("cannot write {}", tmp.string()));
      }
      written += static_cast<std::size_t>(n);
    }
    fchmod(out.get(), 0444);
    fs::rename(tmp, target, ec);
    if (ec) {
      fs::remove(tmp, ec);
      return reject(PluginStage::stage,
                    fmt::format("cannot stage {}: {}", target.string(), ec.message()));
    }
    // A read-only descriptor takes over the lock; the writable one closes after it is taken.
    UniqueFd fd(open(target.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() < 0)
      return reject(PluginStage::stage,
                    fmt::format("cannot open {}: {}", target.string(), std::strerror(errno)));
    flock(fd.get(), LOCK_SH);
    return StagedCopy{target, std::move(fd)};
  }

  // Removes from the plugin cache every staged copy (and temporary file) that no process holds:
  // the versions that were replaced or removed, copies of rejected or quarantined files. What a
  // loaded plugin of any process uses is locked and stays; quarantine records and crash counts
  // stay. A copy removed while some process still has it mapped is harmless: the mapping keeps
  // the file's content alive.
  void prune_cache() const {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(options.cache_dir, ec)) {
      const std::string name = entry.path().filename().string();
      // Only what stage() writes: <sha256>.so, and <sha256>.tmp<pid> left by a process that died
      // while writing it (one at least 10 minutes old: a younger one may be being written, and is
      // locked only once its creator has taken the lock).
      const bool hashed = name.size() > 64 && name.find_first_not_of("0123456789abcdef") == 64;
      const std::string_view rest = std::string_view(name).substr(hashed ? 64 : 0);
      std::error_code type_ec;
      if (!hashed || !entry.is_regular_file(type_ec)) continue;
      if (rest != ".so") {
        if (!rest.starts_with(".tmp") ||
            rest.find_first_not_of("0123456789", 4) != std::string_view::npos)
          continue;
        std::error_code time_ec;
        const auto written = fs::last_write_time(entry.path(), time_ec);
        if (time_ec || fs::file_time_type::clock::now() - written < std::chrono::minutes(10))
          continue;
      }
      UniqueFd fd(open(entry.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
      if (fd.get() < 0 || flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;  // in use
      if (!fd_is_path(fd.get(), entry.path())) continue;
      std::error_code remove_ec;
      fs::remove(entry.path(), remove_ec);
      if (!remove_ec) spdlog::debug("plugin cache: removed {} (no longer used)", name);
    }
  }

  // Loads the staged copy in a child process first. A crash, abort, or hang is a quarantine; so
  // is a process the plugin started that outlives the load (it is killed with the child's group).
  struct Inspection {
    bool quarantined = false;
    std::optional<long long> timeout_ms;  // set when it was cut off at the deadline
  };
  // `source` (the file in the plugins directory) replaces the staged copy's path in messages.
  tl::expected<void, PluginError> inspect(const fs::path& staged, const std::string& source,
                                          Inspection& inspection) const {
    inspection = {};
    if (options.inspector.empty()) return {};
    detail::SubprocessOptions run;
    run.own_process_group = true;
    const auto result =
        detail::run_subprocess({options.inspector.string(), "__inspect", staged.string()},
                               options.settings.scan_timeout, run);
    if (!result.started)
      return reject(PluginStage::inspect, fmt::format("cannot run the inspector {}: {}",
                                                      options.inspector.string(), result.error));
    if (result.timed_out) {
      inspection.quarantined = true;
      inspection.timeout_ms = options.settings.scan_timeout.count();
      return reject(PluginStage::inspect,
                    fmt::format("did not finish loading within {} ms "
                                "(plugins.scan_timeout) in the inspection process (a "
                                "hang in a static initializer or the entry point?); "
                                "quarantined until the file changes or "
                                "plugins.scan_timeout is raised",
                                options.settings.scan_timeout.count()));
    }
    const json answer = json::parse(result.out, nullptr, false);
    if (result.signal != 0 || result.exit_code != 0 || answer.is_discarded() ||
        !answer.is_object()) {
      inspection.quarantined = true;
      // The child's stderr is text from outside: cut without splitting a character, made valid.
      std::string err = detail::utf8_valid(detail::utf8_prefix(result.err, 2000));
      while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) err.pop_back();
      return reject(
          PluginStage::inspect,
          fmt::format("crashed the inspection process while loading: it {}{}; "
                      "quarantined until the file changes",
                      result.describe_end(), err.empty() ? "" : " (stderr: " + err + ")"));
    }
    if (result.left_processes) {
      inspection.quarantined = true;
      return reject(PluginStage::inspect,
                    "started a process that was still running after loading (a fork in a static "
                    "initializer or the entry point?); it was killed, and the file is quarantined "
                    "until it changes");
    }
    if (!answer.value("ok", false)) {
      std::string message = detail::utf8_valid(answer.value("message", "rejected"));
      for (auto at = message.find(staged.string()); at != std::string::npos;
           at = message.find(staged.string(), at + source.size()))
        message.replace(at, staged.string().size(), source);
      return reject(
          plugin_stage_from_string(answer.value("stage", "")).value_or(PluginStage::inspect),
          std::move(message));
    }
    return {};
  }

  // Every stage for `path`, up to a loaded plugin and its checked definition. Registers nothing.
  struct Prepared {
    std::shared_ptr<LoadedPlugin> plugin;
    detail::PluginDefinition definition;
  };
  tl::expected<Prepared, PluginError> prepare(const fs::path& path, PluginInfo& info)
      FLOWREG_REQUIRES(mutex) {
    auto file = read_checked(path, info.sha256);
    if (!file) return tl::unexpected(file.error());
    if (auto q = quarantine.find(file->sha256); q != quarantine.end()) {
      // A hang quarantined under a shorter plugins.scan_timeout gets the longer one.
      if (q->second.timeout_ms && options.settings.scan_timeout.count() > *q->second.timeout_ms) {
        spdlog::info(
            "plugin {}: quarantined for a hang within {} ms; plugins.scan_timeout is now "
            "{} ms: inspecting it again",
            path.string(), *q->second.timeout_ms, options.settings.scan_timeout.count());
        forget_quarantine(file->sha256);
      } else {
        info.status = PluginStatus::quarantined;
        return tl::unexpected(q->second.error);
      }
    }
    if (auto exports = detail::check_entry_symbol(file->elf); !exports)
      return tl::unexpected(exports.error());
    auto staged = stage(*file);
    if (!staged) return tl::unexpected(staged.error());
    Inspection inspection;
    if (auto inspected = inspect(staged->path, detail::utf8_valid(path.string()), inspection);
        !inspected) {
      if (inspection.quarantined) {
        info.status = PluginStatus::quarantined;
        remember_quarantine(file->sha256, inspected.error(), inspection.timeout_ms);
      }
      return tl::unexpected(inspected.error());
    }
    if (const std::size_t crashes = load_crashes(file->sha256); crashes > 0)
      spdlog::warn(
          "plugin {}: crashed flowreg while loading {} time(s) before; quarantined after "
          "{}",
          path.string(), crashes, kMaxLoadCrashes);
    // The journal names this content while it loads here: if this process dies on the way, the
    // next one counts the crash against it.
    const auto record = journal.begin({{"kind", "plugin-load"},
                                       {"sha256", file->sha256},
                                       {"file", detail::utf8_valid(path.string())},
                                       {"pid", static_cast<long>(getpid())}});
    auto loaded = load_in_process(staged->path, path.string(), info, staged->lock.release());
    // Crashes count while they are consecutive: a load this process survived clears the count (a
    // process killed while loading, by Ctrl-C or the OOM killer, does not add up over months).
    if (loaded && load_crashes(file->sha256) > 0) {
      std::error_code ec;
      fs::remove_all(crashes_dir(file->sha256), ec);
    }
    return loaded;
  }

  // `held_fd` (or -1) goes to the loaded plugin, which closes it when it is destroyed (or to
  // nobody when loading fails).
  static tl::expected<Prepared, PluginError> load_in_process(const fs::path& staged,
                                                             const std::string& source,
                                                             PluginInfo& info, int held_fd = -1) {
    auto plugin = LoadedPlugin::open(staged, held_fd, detail::utf8_valid(source));
    if (!plugin) return tl::unexpected(plugin.error());
    info.abi = (*plugin)->abi();
    info.fingerprint = (*plugin)->fingerprint();
    auto definition = detail::parse_plugin_definition((*plugin)->definition(), source);
    if (!definition) {
      std::string message = "its definition is invalid:";
      for (const auto& d : definition.error()) message += " " + d.message + ";";
      message.pop_back();
      return reject(PluginStage::definition, std::move(message));
    }
    info.module = definition->module;
    for (const auto& f : definition->flows) info.flows.push_back(f.slug);
    for (const auto& h : definition->handlers)
      info.handlers.push_back(definition->module + "." + h);
    (*plugin)->name_handlers(info.handlers);
    return Prepared{std::move(*plugin), std::move(*definition)};
  }

  // Loads (or reloads) one file and registers its module.
  void load(const fs::path& path) FLOWREG_REQUIRES(mutex) {
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
      if (!waiting) detail::metrics::plugin_load_failures(to_string(info.error->stage)).inc();
    } else {
      info.status = PluginStatus::loaded;
      detail::metrics::plugin_loads().inc();
      spdlog::info("plugin {}: loaded module '{}' ({} flows)", path.string(), info.module,
                   info.flows.size());
    }
    record.info = std::move(info);
  }

  // `waiting` is set when another file holds the module name or a slug (see held_elsewhere).
  tl::expected<void, PluginError> register_prepared(const fs::path& path, FileRecord& record,
                                                    Prepared& prepared, bool& waiting)
      FLOWREG_REQUIRES(mutex) {
    const std::string& module = prepared.definition.module;
    std::vector<std::string> slugs;
    for (const auto& flow : prepared.definition.flows) slugs.push_back(flow.slug);
    if (auto held = held_elsewhere(path, module, slugs)) {
      waiting = true;
      return tl::unexpected(held->error("waiting for"));
    }
    const bool reload = record.registered_module == module;
    Module m{module, path.string(), std::move(prepared.definition.flows), prepared.plugin};
    auto result = reload ? registry.replace_module(std::move(m), "plugin file changed")
                         : registry.register_module(std::move(m), "plugin file loaded");
    if (!result)
      return tl::unexpected(PluginError{std::move(result.error()), PluginStage::registration});
    if (!record.registered_module.empty() && !reload) {
      // The file now declares another module: the old one goes.
      (void)registry.unregister_module(record.registered_module, "plugin file changed its module");
      modules.erase(record.registered_module);
    }
    record.registered_module = module;
    modules[module] = ModuleOwner{path, prepared.plugin, prepared.definition.handlers};
    return {};
  }

  void remove(const fs::path& path) FLOWREG_REQUIRES(mutex) {
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

  // The watcher's first batch holds every file present, and a rescan may report files that did
  // not change: a file already loaded with the same content stays as it is. Removals go first
  // (they free names), then the incumbents of the last run, then the other files oldest first
  // (see `incumbents`); names freed on the way go to the files waiting for them.
  void apply(const std::vector<detail::FileChange>& changes) FLOWREG_REQUIRES(mutex) {
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
  // reserved for them (see `reserved`).
  void load_all(const std::vector<detail::FileChange>& present) FLOWREG_REQUIRES(mutex) {
    for (const auto& change : present) pending.insert(file_key(change.path));
    for (const auto& change : present) {
      pending.erase(file_key(change.path));
      load_changed(change);
    }
    pending.clear();
  }

  // `present` in the order in which files claim names: incumbents, then by ctime, then by path.
  std::vector<detail::FileChange> claim_order(std::vector<detail::FileChange> present) const
      FLOWREG_REQUIRES(mutex) {
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

  // Gives names that are free now to the files waiting for them, longest
  // waiting first, then persists who holds what.
  void settle() FLOWREG_REQUIRES(mutex) {
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
  void load_changed(const detail::FileChange& change) FLOWREG_REQUIRES(mutex) {
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
  detail::MutexLock lock(impl_->mutex);
  std::set<fs::path> seen;
  for (const auto& change : present) seen.insert(change.path);
  impl_->load_all(impl_->claim_order(present));
  std::vector<fs::path> gone;
  for (const auto& [path, record] : impl_->files)
    if (!seen.contains(path)) gone.push_back(path);
  for (const auto& path : gone) impl_->remove(path);
  impl_->settle();
  impl_->prune_cache();
  std::vector<PluginInfo> out;
  for (const auto& [path, record] : impl_->files) out.push_back(record.info);
  return out;
}

Result<void> PluginLoader::watch() {
  detail::MutexLock lock(impl_->mutex);
  if (impl_->watcher) return {};
  impl_->watcher = std::make_unique<detail::DirectoryWatcher>(
      impl_->options.settings.dir, impl_->watch_options(),
      [impl = impl_.get()](const std::vector<detail::FileChange>& changes) {
        detail::MutexLock inner(impl->mutex);
        impl->apply(changes);
        impl->prune_cache();
      });
  auto started = impl_->watcher->start();
  if (!started) impl_->watcher.reset();
  return started;
}

void PluginLoader::stop() {
  std::unique_ptr<detail::DirectoryWatcher> watcher;
  {
    detail::MutexLock lock(impl_->mutex);
    watcher = std::move(impl_->watcher);
  }
  if (watcher) watcher->stop();  // outside the lock: its callback takes it
}

std::vector<PluginInfo> PluginLoader::plugins() const {
  detail::MutexLock lock(impl_->mutex);
  std::vector<PluginInfo> out;
  for (const auto& [path, record] : impl_->files) out.push_back(record.info);
  return out;
}

PluginInfo PluginLoader::check(const fs::path& file) {
  detail::MutexLock lock(impl_->mutex);
  PluginInfo info;
  info.file = file;
  auto prepared = impl_->prepare(file, info);
  if (prepared) {
    // Would registration succeed? The file would wait for a name another file or module holds
    // (the rule of Impl::held_elsewhere). Paths are compared as files (file_key): `file` may be the
    // same file as a registered one named through a relative plugins directory, and then it does
    // not conflict with itself.
    std::vector<std::string> slugs;
    for (const auto& flow : prepared->definition.flows) slugs.push_back(flow.slug);
    if (auto held = impl_->held_elsewhere(file, prepared->definition.module, slugs))
      prepared = tl::unexpected(held->error("would wait for"));
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
  detail::MutexLock lock(impl_->mutex);
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
  // The host that loads the plugin next is multi-threaded (a worker): so is this process while it
  // loads, so that a plugin that fails only with several threads fails here, where it is harmless.
  constexpr int kThreads = 4;
  static std::mutex idle_mutex;
  static std::condition_variable idle;
  for (int i = 0; i < kThreads; ++i)
    std::thread([] {
      std::unique_lock lock(idle_mutex);
      idle.wait(lock, [] { return false; });
    }).detach();

  json out;
  try {
    PluginInfo info;
    // The host checked the file within plugins.max_bytes; this bound only keeps the read finite.
    auto prepared = detail::check_exports(file, std::uint64_t{4} << 30).and_then([&]() {
      return Impl::load_in_process(file, file.string(), info);
    });
    if (prepared) {
      out = {{"ok", true},          {"module", info.module},
             {"abi", info.abi},     {"fingerprint", info.fingerprint},
             {"flows", info.flows}, {"handlers", info.handlers}};
    } else {
      out = {{"ok", false},
             {"stage", to_string(prepared.error().stage)},
             {"message", prepared.error().message}};
    }
  } catch (const std::exception& e) {
    out = {{"ok", false},
           {"stage", to_string(PluginStage::inspect)},
           {"message", fmt::format("failed: {}", e.what())}};
  }
  std::fputs(out.dump(-1, ' ', false, json::error_handler_t::replace).c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  // No unloading, no static destructors: code the plugin left running (threads) must not see its
  // world torn down before this process ends.
  std::_Exit(0);
}

}  // namespace flowreg
