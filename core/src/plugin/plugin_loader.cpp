#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "config/definition.hpp"
#include "flowreg/plugins.hpp"
#include "flowreg/thread_annotations.hpp"
#include "metrics/metrics.hpp"
#include "plugin/directory_watcher.hpp"
#include "plugin/elf_reader.hpp"
#include "plugin/inspector.hpp"
#include "plugin/name_ownership.hpp"
#include "plugin/plugin_cache.hpp"
#include "plugin/plugin_file_check.hpp"
#include "plugin/plugin_library.hpp"
#include "plugin/quarantine.hpp"
#include "util/enum_names.hpp"
#include "util/sha256.hpp"
#include "util/strings.hpp"

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

const std::filesystem::path& HandlerRef::code_file() const noexcept { return plugin_->file(); }

const std::vector<std::string>& HandlerRef::plugin_handler_names() const noexcept {
  return plugin_->handler_names();
}

namespace {

using detail::Conflict;
using detail::LoadedPlugin;
using detail::reject;
using detail::same_file;

}  // namespace

// The orchestration: the stages of flowreg/plugins.hpp in their order, the files of the directory
// and the modules they registered. Each piece of the way lives in a file of its own:
//   plugin_file_check.hpp  file, permissions, size, elf, allowlist (no plugin code runs)
//   quarantine.hpp         contents that crashed, hung or left a process behind, and load crashes
//   plugin_cache.hpp       the private copies that are loaded, and their pruning
//   inspector.hpp          the load in a child process
//   name_ownership.hpp     who keeps a contested module name or slug, and owners.json
//
// Lock order: `mutex` is the loader's only lock, and the outermost. The registry is called with
// it held (the registry takes its own locks inside and calls its listeners after releasing them,
// but still within the call): a registry listener runs with `mutex` held and must not call into
// this loader. The watcher's callback takes `mutex`, so the watcher is stopped outside it
// (PluginLoader::stop). The pieces (cache, quarantine, names) take no lock of their own.
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

  // Immutable (its directory is options.cache_dir): needs no lock (plugin_cache.hpp).
  detail::PluginCache cache;

  mutable detail::AnnotatedMutex mutex;  // serializes loading
  std::map<fs::path, FileRecord> files FLOWREG_GUARDED_BY(mutex);
  std::map<std::string, ModuleOwner, std::less<>> modules FLOWREG_GUARDED_BY(mutex);
  // By sha256, persisted under cache_dir; also counts the loads that crashed a process.
  detail::Quarantine quarantine FLOWREG_GUARDED_BY(mutex);
  std::unique_ptr<detail::DirectoryWatcher> watcher FLOWREG_GUARDED_BY(mutex);

  // Ownership of module names and flow slugs contested by two files: the incumbent keeps a name
  // (the rule, and its ledger <cache_dir>/owners.json: name_ownership.hpp). Who holds a name now
  // is `modules` and the registry; held_elsewhere combines them with the reservations of `names`.
  detail::NameOwnership names FLOWREG_GUARDED_BY(mutex);
  // Tickets of the files waiting for a name: the longest waiting gets it first.
  std::uint64_t wait_sequence FLOWREG_GUARDED_BY(mutex) = 0;

  static PluginLoaderOptions with_default_cache_dir(PluginLoaderOptions o) {
    if (o.cache_dir.empty()) o.cache_dir = fs::path(".flowreg") / "plugin-cache";
    return o;
  }

  Impl(FlowRegistry& r, PluginLoaderOptions o)
      : registry(r),
        options(with_default_cache_dir(std::move(o))),
        cache(options.cache_dir),
        quarantine(options.cache_dir),
        names(options.cache_dir) {
    detail::MutexLock lock(mutex);
    quarantine.load();
    names.load();
  }

  // Persists who holds what (NameOwnership::save), in module name order.
  void save_owners() const FLOWREG_REQUIRES(mutex) {
    std::vector<detail::HeldNames> held;
    for (const auto& [module, owner] : modules) {
      detail::HeldNames h{owner.file, module, {}};
      for (const auto& flow : registry.module_flows(module)) h.flows.push_back(flow->def.slug);
      held.push_back(std::move(h));
    }
    names.save(options.settings.dir, held);
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
    return names.reserved_conflict(module, flows, path);
  }

  // Every stage for `path`, up to a loaded plugin and its checked definition. Registers nothing.
  struct Prepared {
    std::shared_ptr<LoadedPlugin> plugin;
    detail::PluginDefinition definition;
  };
  tl::expected<Prepared, PluginError> prepare(const fs::path& path, PluginInfo& info)
      FLOWREG_REQUIRES(mutex) {
    auto file = detail::read_checked(path, options.settings, options.trusted_uid, info.sha256);
    if (!file) return tl::unexpected(file.error());
    if (const detail::QuarantineRecord* q = quarantine.find(file->sha256)) {
      // A hang quarantined under a shorter plugins.scan_timeout gets the longer one.
      if (q->timeout_ms && options.settings.scan_timeout.count() > *q->timeout_ms) {
        spdlog::info(
            "plugin {}: quarantined for a hang within {} ms; plugins.scan_timeout is now "
            "{} ms: inspecting it again",
            path.string(), *q->timeout_ms, options.settings.scan_timeout.count());
        quarantine.forget(file->sha256);
      } else {
        info.status = PluginStatus::quarantined;
        return tl::unexpected(q->error);
      }
    }
    if (auto exports = detail::check_entry_symbol(file->elf); !exports)
      return tl::unexpected(exports.error());
    auto staged = cache.stage(*file);
    if (!staged) return tl::unexpected(staged.error());
    detail::Inspection inspection;
    if (auto inspected =
            detail::inspect_in_child(options.inspector, options.settings.scan_timeout, staged->path,
                                     detail::utf8_valid(path.string()), inspection);
        !inspected) {
      if (inspection.quarantined) {
        info.status = PluginStatus::quarantined;
        quarantine.remember(file->sha256, inspected.error(), inspection.timeout_ms);
      }
      return tl::unexpected(inspected.error());
    }
    if (const std::size_t crashes = quarantine.load_crashes(file->sha256); crashes > 0)
      spdlog::warn(
          "plugin {}: crashed flowreg while loading {} time(s) before; quarantined after "
          "{}",
          path.string(), crashes, detail::kMaxLoadCrashes);
    // The journal names this content while it loads here: if this process dies on the way, the
    // next one counts the crash against it.
    const auto record = quarantine.begin_load(file->sha256, path);
    auto loaded = load_in_process(staged->path, path.string(), info, staged->lock.release());
    // Crashes count while they are consecutive: a load this process survived clears the count (a
    // process killed while loading, by Ctrl-C or the OOM killer, does not add up over months).
    if (loaded) quarantine.clear_load_crashes(file->sha256);
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
  // (NameOwnership::claim_order); names freed on the way go to the files waiting for them.
  void apply(const std::vector<detail::FileChange>& changes) FLOWREG_REQUIRES(mutex) {
    std::vector<detail::FileChange> present;
    for (const auto& change : changes) {
      if (change.kind == detail::FileChange::Kind::removed)
        remove(change.path);
      else
        present.push_back(change);
    }
    load_all(names.claim_order(std::move(present)));
    settle();
  }

  // Loads `present` in that order; the files of the batch still to be loaded keep the names
  // reserved for them (NameOwnership::begin_batch).
  void load_all(const std::vector<detail::FileChange>& present) FLOWREG_REQUIRES(mutex) {
    names.begin_batch(present);
    for (const auto& change : present) {
      names.take_from_batch(change.path);
      load_changed(change);
    }
    names.end_batch();
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
  impl_->load_all(impl_->names.claim_order(present));
  std::vector<fs::path> gone;
  for (const auto& [path, record] : impl_->files)
    if (!seen.contains(path)) gone.push_back(path);
  for (const auto& path : gone) impl_->remove(path);
  impl_->settle();
  impl_->cache.prune();
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
        impl->cache.prune();
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

bool PluginLoader::quarantine(const HandlerRef& handler, const std::string& reason) {
  detail::MutexLock lock(impl_->mutex);
  for (auto it = impl_->modules.begin(); it != impl_->modules.end(); ++it) {
    if (it->second.plugin != handler.plugin_) continue;
    const std::string module = it->first;
    auto file = impl_->files.find(it->second.file);
    if (file == impl_->files.end() || file->second.info.sha256.empty()) return false;
    Impl::FileRecord& record = file->second;
    const PluginError error = plugin_error(PluginStage::inspect, reason);
    impl_->quarantine.remember(record.info.sha256, error);
    (void)impl_->registry.unregister_module(module, "plugin quarantined: " + reason);
    impl_->modules.erase(it);
    record.registered_module.clear();
    record.info.status = PluginStatus::quarantined;
    record.info.error = error;
    spdlog::error("plugin {}: quarantined, module '{}' unregistered: {}", record.info.file.string(),
                  module, reason);
    return true;
  }
  return false;
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
  // Whatever the plugin starts while it loads is killed before the answer, in this process group
  // or not (setsid), orphaned on the way or not.
  detail::watch_inspection_processes();
  detail::start_inspection_threads();
  PluginInfo info;
  std::optional<PluginError> failed;
  try {
    // The host checked the file within plugins.max_bytes; this bound only keeps the read finite.
    auto prepared = detail::check_exports(file, std::uint64_t{4} << 30).and_then([&]() {
      return Impl::load_in_process(file, file.string(), info);
    });
    if (!prepared) failed = prepared.error();
  } catch (const std::exception& e) {
    info = PluginInfo{};
    failed = plugin_error(PluginStage::inspect, fmt::format("failed: {}", e.what()));
  }
  const int left_processes = detail::end_inspection_processes();
  const std::string answer =
      detail::inspection_answer(info, failed ? &*failed : nullptr, left_processes);
  std::fputs(answer.c_str(), stdout);

  std::fflush(stdout);
  // No unloading, no static destructors: code the plugin left running (threads) must not see its
  // world torn down before this process ends.
  std::_Exit(0);
}

}  // namespace flowreg
