#include "flowreg/flow_registry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <map>

#include "flowreg/sync_point.hpp"
#include "flowreg/validate.hpp"

namespace flowreg {

std::string_view to_string(ModuleEvent::Kind kind) noexcept {
  switch (kind) {
    case ModuleEvent::Kind::registered:
      return "registered";
    case ModuleEvent::Kind::replaced:
      return "replaced";
    case ModuleEvent::Kind::unregistered:
      return "unregistered";
  }
  return "unknown";
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

  const Slot* find_slot(std::string_view slug) const noexcept {
    const std::size_t hash = hash_slug(slug);
    for (std::size_t at = hash & mask;; at = (at + 1) & mask) {
      const Slot& slot = slots[at];
      if (!slot.flow) return nullptr;
      if (slot.hash == hash && slot.flow->def.slug == slug) return &slot;
    }
  }
};

struct FlowRegistry::Listeners {
  std::mutex mutex;
  std::uint64_t next_id = 1;
  std::map<std::uint64_t, std::shared_ptr<Listener>> by_id;
};

struct FlowRegistry::State {
  struct ModuleRecord {
    std::string source;
    std::shared_ptr<const void> code;  // the owning reference while registered
  };

  std::mutex writer;  // serializes writers; guards `modules` and `retired`
  std::map<std::string, ModuleRecord, std::less<>> modules;
  // Old snapshots stay here until only this list holds them, so that a reader dropping its cached
  // snapshot never frees a large table on a hot thread; writers free them.
  std::vector<std::shared_ptr<const Snapshot>> retired;

  mutable std::mutex current_mutex;  // guards `current` (taken by readers once per publish)
  std::shared_ptr<const Snapshot> current = [] {
    auto empty = std::make_shared<Snapshot>();
    empty->build_index();  // every snapshot has an index, even the empty one
    return empty;
  }();

  std::shared_ptr<Listeners> listeners = std::make_shared<Listeners>();

  void publish(std::shared_ptr<const Snapshot> next, std::atomic<std::uint64_t>& version) {
    std::shared_ptr<const Snapshot> old;
    {
      std::lock_guard lock(current_mutex);
      old = std::exchange(current, std::move(next));
    }
    // Store the snapshot, then bump the version: a reader that sees the new version finds at
    // least the new snapshot.
    version.fetch_add(1, std::memory_order_release);
    std::erase_if(retired, [](const auto& s) { return s.use_count() == 1; });
    retired.push_back(std::move(old));
  }

  void notify(const ModuleEvent& event) {
    std::vector<std::shared_ptr<Listener>> targets;
    {
      std::lock_guard lock(listeners->mutex);
      for (const auto& [id, fn] : listeners->by_id) targets.push_back(fn);
    }
    for (const auto& fn : targets) (*fn)(event);
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

Result<void> FlowRegistry::apply(Module module, bool replace, std::string_view reason) {
  const std::string who = describe(module.name, module.source);

  // Validate everything before touching shared state.
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
  if (!problems.empty()) {
    // Built before `problems` is moved into the error (argument order is unspecified).
    std::string message = fmt::format("{} is invalid: {} problem{}", who, problems.size(),
                                      problems.size() == 1 ? "" : "s");
    return make_error(Errc::invalid_definition, std::move(message), std::move(problems));
  }

  // YAML modules have no code; a token stands in so that FlowRef::code() tells "kept alive" from
  // "released".
  std::shared_ptr<const void> code = module.code ? module.code : std::make_shared<const int>(0);
  std::vector<std::shared_ptr<const RegisteredFlow>> fresh;
  fresh.reserve(module.flows.size());
  for (auto& flow : module.flows) {
    auto registered = std::make_shared<RegisteredFlow>();
    registered->version = flow_version(flow);
    registered->module = module.name;
    registered->source = module.source;
    registered->code = code;
    registered->def = std::move(flow);
    fresh.push_back(std::move(registered));
  }

  std::lock_guard lock(state_->writer);
  FLOWREG_SYNC_POINT("flow_registry.writer_locked");
  auto existing = state_->modules.find(module.name);
  if (existing != state_->modules.end() && !replace)
    return make_error(
        Errc::duplicate_module,
        fmt::format("{}: a module named '{}' is already registered{}", who, module.name,
                    existing->second.source.empty()
                        ? std::string()
                        : fmt::format(" from {}", existing->second.source)));

  const std::shared_ptr<const Snapshot> current = load();
  for (const auto& flow : fresh) {
    const auto* slot = current->find_slot(flow->def.slug);
    if (slot && slot->flow->module != module.name)
      problems.push_back(
          {Location{module.source},
           fmt::format("flow slug '{}' of {} is already registered by {}", flow->def.slug, who,
                       describe(slot->flow->module, slot->flow->source))});
  }
  if (!problems.empty()) {
    std::string message =
        problems.size() == 1
            ? problems[0].message
            : fmt::format("{}: {} flow slugs are already registered by other modules", who,
                          problems.size());
    return make_error(Errc::duplicate_slug, std::move(message), std::move(problems));
  }

  // The next snapshot: the other modules' flows merged with this module's (both sorted by slug).
  auto next = std::make_shared<Snapshot>();
  std::vector<Snapshot::Entry> added;
  added.reserve(fresh.size());
  for (const auto& f : fresh) added.push_back({f, hash_slug(f->def.slug)});
  std::sort(added.begin(), added.end(),
            [](const auto& a, const auto& b) { return a.flow->def.slug < b.flow->def.slug; });
  next->entries.reserve(current->entries.size() + added.size());
  auto keep = [&](const Snapshot::Entry& e) { return e.flow->module != module.name; };
  auto by_slug = [](const Snapshot::Entry& a, const Snapshot::Entry& b) {
    return a.flow->def.slug < b.flow->def.slug;
  };
  std::vector<Snapshot::Entry> kept;
  if (existing == state_->modules.end()) {
    std::merge(current->entries.begin(), current->entries.end(), added.begin(), added.end(),
               std::back_inserter(next->entries), by_slug);
  } else {
    kept.reserve(current->entries.size());
    std::copy_if(current->entries.begin(), current->entries.end(), std::back_inserter(kept), keep);
    std::merge(kept.begin(), kept.end(), added.begin(), added.end(),
               std::back_inserter(next->entries), by_slug);
  }
  next->build_index();
  next->modules = current->modules;
  std::vector<std::string> old_flows;
  if (auto it = next->modules.find(module.name); it != next->modules.end()) {
    for (const auto& f : it->second) old_flows.push_back(f->def.slug);
    it->second = fresh;
  } else {
    next->modules.emplace(module.name, fresh);
  }

  const bool replaced = existing != state_->modules.end();
  state_->modules[module.name] = State::ModuleRecord{module.source, std::move(code)};
  state_->publish(std::move(next), version_);

  ModuleEvent event{replaced ? ModuleEvent::Kind::replaced : ModuleEvent::Kind::registered,
                    module.name,
                    module.source,
                    {},
                    std::move(old_flows),
                    std::string(reason)};
  for (const auto& f : fresh) event.flows.push_back(f->def.slug);
  state_->notify(event);
  return {};
}

Result<void> FlowRegistry::unregister_module(std::string_view name, std::string_view reason) {
  std::lock_guard lock(state_->writer);
  auto existing = state_->modules.find(name);
  if (existing == state_->modules.end())
    return make_error(Errc::not_found, fmt::format("no module named '{}' is registered", name));
  const std::shared_ptr<const Snapshot> current = load();
  auto next = std::make_shared<Snapshot>();
  next->entries.reserve(current->entries.size());
  std::copy_if(current->entries.begin(), current->entries.end(), std::back_inserter(next->entries),
               [&](const Snapshot::Entry& e) { return e.flow->module != name; });
  next->build_index();
  next->modules = current->modules;
  ModuleEvent event{ModuleEvent::Kind::unregistered,
                    std::string(name),
                    existing->second.source,
                    {},
                    {},
                    std::string(reason)};
  if (auto it = next->modules.find(name); it != next->modules.end()) {
    for (const auto& f : it->second) event.flows.push_back(f->def.slug);
    next->modules.erase(it);
  }
  // Dropping the record drops the registry's reference to the module's code; FlowRefs taken
  // earlier keep it alive until they are gone.
  state_->modules.erase(existing);
  state_->publish(std::move(next), version_);
  state_->notify(event);
  return {};
}

std::shared_ptr<const FlowRegistry::Snapshot> FlowRegistry::load() const {
  std::lock_guard lock(state_->current_mutex);
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

FlowRegistry::Subscription FlowRegistry::subscribe(Listener listener) {
  auto& listeners = *state_->listeners;
  std::lock_guard lock(listeners.mutex);
  const std::uint64_t id = listeners.next_id++;
  listeners.by_id.emplace(id, std::make_shared<Listener>(std::move(listener)));
  return Subscription(state_->listeners, id);
}

FlowRegistry::Subscription& FlowRegistry::Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    reset();
    listeners_ = std::move(other.listeners_);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

void FlowRegistry::Subscription::reset() noexcept {
  if (auto listeners = listeners_.lock()) {
    std::lock_guard lock(listeners->mutex);
    listeners->by_id.erase(id_);
  }
  listeners_.reset();
}

}  // namespace flowreg
