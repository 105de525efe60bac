#include "flowreg/flow_registry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <map>

#include "flowreg/sync_point.hpp"
#include "flowreg/thread_annotations.hpp"
#include "flowreg/validate.hpp"
#include "util/enum_names.hpp"

namespace flowreg {

namespace {

constexpr detail::EnumName<ModuleEvent::Kind> kModuleEventNames[] = {
    {ModuleEvent::Kind::registered, "registered"},
    {ModuleEvent::Kind::replaced, "replaced"},
    {ModuleEvent::Kind::unregistered, "unregistered"}};

}  // namespace

std::string_view to_string(ModuleEvent::Kind kind) noexcept {
  return detail::name_in(kModuleEventNames, kind);
}

namespace {

std::atomic<std::uint64_t> next_registry_id{1};

std::size_t hash_slug(std::string_view slug) noexcept {
  return std::hash<std::string_view>{}(slug);
}

std::string describe(std::string_view module, std::string_view source) {
  return source.empty() ? fmt::format("module '{}'", module)
                        : fmt::format("module '{}' ({})", module, source);
}

}  // namespace

// An immutable table of every registered flow: an open-addressing index by slug over a vector
// sorted by slug, plus each module's flows.
struct FlowRegistry::Snapshot {
  struct Entry {
    std::shared_ptr<const RegisteredFlow> flow;
    std::size_t hash;
  };
  struct Slot {
    std::size_t hash = 0;
    const RegisteredFlow* flow = nullptr;
    std::uint32_t entry = 0;
  };
  std::vector<Entry> entries;  // sorted by slug
  std::vector<Slot> slots;     // power-of-two size, load factor <= 1/2, linear probing
  std::size_t mask = 0;
  // Module name -> its flows in declaration order.
  std::map<std::string, std::vector<std::shared_ptr<const RegisteredFlow>>, std::less<>> modules;

  void build_index() {
    const std::size_t capacity = std::bit_ceil(std::max<std::size_t>(8, entries.size() * 2));
    slots.assign(capacity, Slot{});
    mask = capacity - 1;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      std::size_t at = entries[i].hash & mask;
      while (slots[at].flow) at = (at + 1) & mask;
      slots[at] = Slot{entries[i].hash, entries[i].flow.get(), static_cast<std::uint32_t>(i)};
    }
  }

  // The next snapshot: this one without `module`'s flows, or with them replaced by `flows`.
  std::shared_ptr<const Snapshot> without(std::string_view module) const;
  std::shared_ptr<const Snapshot> with(
      const std::string& module,
      const std::vector<std::shared_ptr<const RegisteredFlow>>& flows) const;
  // The slugs of a module's flows, in declaration order (empty when absent).
  std::vector<std::string> slugs_of(std::string_view module) const;
  // One problem per flow whose slug another module holds here.
  std::vector<Diagnostic> slugs_held_elsewhere(
      const std::string& module, const std::string& who,
      const std::vector<std::shared_ptr<const RegisteredFlow>>& flows) const;

  const Slot* find_slot(std::string_view slug) const noexcept {
    const std::size_t hash = hash_slug(slug);
    for (std::size_t at = hash & mask;; at = (at + 1) & mask) {
      const Slot& slot = slots[at];
      if (!slot.flow) return nullptr;
      if (slot.hash == hash && slot.flow->def.slug == slug) return &slot;
    }
  }
};

struct FlowRegistry::State {
  struct ModuleRecord {
    std::string source;
    std::shared_ptr<const void> code;  // the owning reference while registered
  };

  detail::AnnotatedMutex writer;  // serializes writers
  std::map<std::string, ModuleRecord, std::less<>> modules FLOWREG_GUARDED_BY(writer);
  // Old snapshots stay here until only this list holds them, so that a reader dropping its cached
  // snapshot never frees a large table on a hot thread; writers free them.
  std::vector<std::shared_ptr<const Snapshot>> retired FLOWREG_GUARDED_BY(writer);

  mutable detail::AnnotatedMutex current_mutex;  // taken by readers once per publish
  std::shared_ptr<const Snapshot> current FLOWREG_GUARDED_BY(current_mutex) = [] {
    auto empty = std::make_shared<Snapshot>();
    empty->build_index();  // every snapshot has an index, even the empty one
    return empty;
  }();

  const std::shared_ptr<detail::Listeners<ModuleEvent>> listeners =
      std::make_shared<detail::Listeners<ModuleEvent>>();

  void publish(std::shared_ptr<const Snapshot> next, std::atomic<std::uint64_t>& version)
      FLOWREG_REQUIRES(writer) {
    std::shared_ptr<const Snapshot> old;
    {
      detail::MutexLock lock(current_mutex);
      old = std::exchange(current, std::move(next));
    }
    // Store the snapshot, then bump the version: a reader that sees the new version finds at
    // least the new snapshot.
    version.fetch_add(1, std::memory_order_release);
    std::erase_if(retired, [](const auto& s) { return s.use_count() == 1; });
    retired.push_back(std::move(old));
  }
};

FlowRegistry::FlowRegistry()
    : id_(next_registry_id.fetch_add(1)), state_(std::make_unique<State>()) {}
FlowRegistry::~FlowRegistry() = default;

Result<void> FlowRegistry::register_module(Module module, std::string_view reason) {
  return apply(std::move(module), false, reason);
}

Result<void> FlowRegistry::replace_module(Module module, std::string_view reason) {
  return apply(std::move(module), true, reason);
}

namespace {

// Sets each flow's module and source, and returns every problem of the module and its flows (the
// module's name, each flow's definition, slugs defined twice).
std::vector<Diagnostic> validate_module(Module& module, const std::string& who) {
  std::vector<Diagnostic> problems;
  if (auto problem = slug_problem(module.name); !problem.empty())
    problems.push_back(
        {Location{module.source}, fmt::format("module name '{}' {}", module.name, problem)});
  std::map<std::string_view, std::size_t> seen;
  for (std::size_t i = 0; i < module.flows.size(); ++i) {
    FlowDef& flow = module.flows[i];
    flow.module = module.name;
    if (flow.source.empty()) flow.source = module.source;
    for (auto& d : validate_flow(flow)) problems.push_back(std::move(d));
    if (auto [it, inserted] = seen.emplace(flow.slug, i); !inserted)
      problems.push_back({Location{flow.source},
                          fmt::format("flow slug '{}' is defined twice in {}", flow.slug, who)});
  }
  return problems;
}

// The module's flows as the registry keeps them, each holding `code` weakly.
std::vector<std::shared_ptr<const RegisteredFlow>> registered_flows(
    Module& module, const std::shared_ptr<const void>& code) {
  std::vector<std::shared_ptr<const RegisteredFlow>> flows;
  flows.reserve(module.flows.size());
  for (auto& flow : module.flows) {
    auto registered = std::make_shared<RegisteredFlow>();
    registered->version = flow_version(flow);
    registered->module = module.name;
    registered->source = module.source;
    registered->code = code;
    registered->def = std::move(flow);
    flows.push_back(std::move(registered));
  }
  return flows;
}

}  // namespace

std::shared_ptr<const FlowRegistry::Snapshot> FlowRegistry::Snapshot::without(
    std::string_view module) const {
  auto next = std::make_shared<Snapshot>();
  next->entries.reserve(entries.size());
  std::copy_if(entries.begin(), entries.end(), std::back_inserter(next->entries),
               [&](const Entry& e) { return e.flow->module != module; });
  next->modules = modules;
  if (auto it = next->modules.find(module); it != next->modules.end()) next->modules.erase(it);
  next->build_index();
  return next;
}

std::shared_ptr<const FlowRegistry::Snapshot> FlowRegistry::Snapshot::with(
    const std::string& module,
    const std::vector<std::shared_ptr<const RegisteredFlow>>& flows) const {
  std::vector<Entry> added;
  added.reserve(flows.size());
  for (const auto& f : flows) added.push_back({f, hash_slug(f->def.slug)});
  auto by_slug = [](const Entry& a, const Entry& b) { return a.flow->def.slug < b.flow->def.slug; };
  std::sort(added.begin(), added.end(), by_slug);
  auto next = std::make_shared<Snapshot>();
  next->entries.reserve(entries.size() + added.size());
  if (!modules.contains(module)) {
    std::merge(entries.begin(), entries.end(), added.begin(), added.end(),
               std::back_inserter(next->entries), by_slug);
  } else {
    std::vector<Entry> kept;
    kept.reserve(entries.size());
    std::copy_if(entries.begin(), entries.end(), std::back_inserter(kept),
                 [&](const Entry& e) { return e.flow->module != module; });
    std::merge(kept.begin(), kept.end(), added.begin(), added.end(),
               std::back_inserter(next->entries), by_slug);
  }
  next->build_index();
  next->modules = modules;
  next->modules.insert_or_assign(module, flows);
  return next;
}

std::vector<std::string> FlowRegistry::Snapshot::slugs_of(std::string_view module) const {
  std::vector<std::string> out;
  if (auto it = modules.find(module); it != modules.end())
    for (const auto& f : it->second) out.push_back(f->def.slug);
  return out;
}

std::vector<Diagnostic> FlowRegistry::Snapshot::slugs_held_elsewhere(
    const std::string& module, const std::string& who,
    const std::vector<std::shared_ptr<const RegisteredFlow>>& flows) const {
  std::vector<Diagnostic> problems;
  for (const auto& flow : flows) {
    const Slot* slot = find_slot(flow->def.slug);
    if (slot && slot->flow->module != module)
      problems.push_back(
          {Location{flow->source},
           fmt::format("flow slug '{}' of {} is already registered by {}", flow->def.slug, who,
                       describe(slot->flow->module, slot->flow->source))});
  }
  return problems;
}

Result<void> FlowRegistry::apply(Module module, bool replace, std::string_view reason) {
  const std::string who = describe(module.name, module.source);

  // Validate everything before touching shared state.
  if (std::vector<Diagnostic> problems = validate_module(module, who); !problems.empty()) {
    // Built before `problems` is moved into the error (argument order is unspecified).
    std::string message = fmt::format("{} is invalid: {} problem{}", who, problems.size(),
                                      problems.size() == 1 ? "" : "s");
    return make_error(Errc::invalid_definition, std::move(message), std::move(problems));
  }
  // YAML modules have no code; a token stands in so that FlowRef::code() tells "kept alive" from
  // "released".
  std::shared_ptr<const void> code = module.code ? module.code : std::make_shared<const int>(0);
  const auto flows = registered_flows(module, code);

  std::uint64_t last_event = 0;
  {
    detail::MutexLock lock(state_->writer);
    FLOWREG_SYNC_POINT("flow_registry.writer_locked");
    auto existing = state_->modules.find(module.name);
    const bool replaced = existing != state_->modules.end();
    if (replaced && !replace)
      return make_error(
          Errc::duplicate_module,
          fmt::format("{}: a module named '{}' is already registered{}", who, module.name,
                      existing->second.source.empty()
                          ? std::string()
                          : fmt::format(" from {}", existing->second.source)));

    const std::shared_ptr<const Snapshot> current = load();
    if (auto problems = current->slugs_held_elsewhere(module.name, who, flows); !problems.empty()) {
      std::string message =
          problems.size() == 1
              ? problems[0].message
              : fmt::format("{}: {} flow slugs are already registered by other modules", who,
                            problems.size());
      return make_error(Errc::duplicate_slug, std::move(message), std::move(problems));
    }

    ModuleEvent event{replaced ? ModuleEvent::Kind::replaced : ModuleEvent::Kind::registered,
                      module.name,
                      module.source,
                      {},
                      current->slugs_of(module.name),
                      std::string(reason)};
    for (const auto& f : flows) event.flows.push_back(f->def.slug);
    state_->modules.insert_or_assign(module.name,
                                     State::ModuleRecord{module.source, std::move(code)});
    state_->publish(current->with(module.name, flows), version_);
    last_event = state_->listeners->enqueue(std::move(event));
  }
  state_->listeners->deliver_through(last_event);
  return {};
}

Result<void> FlowRegistry::unregister_module(std::string_view name, std::string_view reason) {
  std::uint64_t last_event = 0;
  {
    detail::MutexLock lock(state_->writer);
    auto existing = state_->modules.find(name);
    if (existing == state_->modules.end())
      return make_error(Errc::not_found, fmt::format("no module named '{}' is registered", name));
    const std::shared_ptr<const Snapshot> current = load();
    ModuleEvent event{ModuleEvent::Kind::unregistered,
                      std::string(name),
                      existing->second.source,
                      current->slugs_of(name),
                      {},
                      std::string(reason)};
    // Dropping the record drops the registry's reference to the module's code; FlowRefs taken
    // earlier keep it alive until they are gone.
    state_->modules.erase(existing);
    state_->publish(current->without(name), version_);
    last_event = state_->listeners->enqueue(std::move(event));
  }
  state_->listeners->deliver_through(last_event);
  return {};
}

std::shared_ptr<const FlowRegistry::Snapshot> FlowRegistry::load() const {
  detail::MutexLock lock(state_->current_mutex);
  return state_->current;
}

namespace {

// Per-thread snapshot caches, keyed by registry id (ids are never reused, so a destroyed
// registry's entry can never be mistaken for a new one's).
struct CacheEntry {
  std::uint64_t registry = 0;
  std::uint64_t version = 0;
  std::shared_ptr<const void> snapshot;  // type-erased FlowRegistry::Snapshot
};
struct ThreadCache {
  std::array<CacheEntry, 4> entries;
  unsigned next_victim = 0;
};
thread_local ThreadCache tls_cache;

}  // namespace

const FlowRegistry::Snapshot* FlowRegistry::thread_snapshot() const noexcept {
  const std::uint64_t version = version_.load(std::memory_order_acquire);
  ThreadCache& cache = tls_cache;
  CacheEntry* entry = nullptr;
  for (auto& e : cache.entries) {
    if (e.registry == id_) {
      entry = &e;
      break;
    }
  }
  if (entry && entry->version == version)
    return static_cast<const Snapshot*>(entry->snapshot.get());
  if (!entry) {
    entry = &cache.entries[cache.next_victim++ % cache.entries.size()];
    entry->registry = id_;
  }
  FLOWREG_SYNC_POINT("flow_registry.reader_refresh");
  entry->snapshot = load();
  entry->version = version;
  return static_cast<const Snapshot*>(entry->snapshot.get());
}

const RegisteredFlow* FlowRegistry::find(std::string_view slug) const noexcept {
  const Snapshot::Slot* slot = thread_snapshot()->find_slot(slug);
  return slot ? slot->flow : nullptr;
}

const RegisteredFlow* FlowRegistry::Reader::find(std::string_view slug) noexcept {
  const std::uint64_t version = registry_->version_.load(std::memory_order_acquire);
  if (version != version_ || !snapshot_) {
    snapshot_ = registry_->load();
    version_ = version;
  }
  const Snapshot::Slot* slot = snapshot_->find_slot(slug);
  return slot ? slot->flow : nullptr;
}

FlowRef FlowRegistry::make_ref(const std::shared_ptr<const RegisteredFlow>& flow) {
  auto code = flow->code.lock();
  if (!code) return {};  // unregistered and released meanwhile
  return FlowRef(flow, std::move(code));
}

FlowRef FlowRegistry::get(std::string_view slug) const {
  const Snapshot* snapshot = thread_snapshot();
  const Snapshot::Slot* slot = snapshot->find_slot(slug);
  if (!slot) return {};
  return make_ref(snapshot->entries[slot->entry].flow);
}

std::vector<FlowRef> FlowRegistry::module_flows(std::string_view module) const {
  const auto snapshot = load();
  std::vector<FlowRef> out;
  if (auto it = snapshot->modules.find(module); it != snapshot->modules.end())
    for (const auto& f : it->second)
      if (auto ref = make_ref(f)) out.push_back(std::move(ref));
  return out;
}

std::vector<FlowRef> FlowRegistry::list() const {
  const auto snapshot = load();
  std::vector<FlowRef> out;
  out.reserve(snapshot->entries.size());
  for (const auto& e : snapshot->entries)
    if (auto ref = make_ref(e.flow)) out.push_back(std::move(ref));
  return out;
}

std::vector<std::string> FlowRegistry::modules() const {
  const auto snapshot = load();
  std::vector<std::string> out;
  for (const auto& [name, flows] : snapshot->modules) out.push_back(name);
  return out;
}

std::size_t FlowRegistry::size() const noexcept { return thread_snapshot()->entries.size(); }

Subscription FlowRegistry::subscribe(Listener listener) {
  return state_->listeners->subscribe(std::move(listener));
}

}  // namespace flowreg
