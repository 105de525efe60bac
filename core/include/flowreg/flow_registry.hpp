#pragma once
// FlowRegistry: the table of registered flows, by module name and by slug.
//
// Thread-safety: every member function may be called concurrently. Readers (find, get, Reader)
// never take a lock and write no shared memory on the hot path: each reader keeps a cached
// pointer to an immutable snapshot and re-reads it only when a version counter says that a writer
// published a new one. Writers (register_module, replace_module, unregister_module) serialize
// internally and publish one new snapshot per module change.
//
// Lifetime: a module's code handle (Module::code, e.g. a loaded plugin) is kept alive by the
// registry while the module is registered and by every FlowRef taken from it. Unregistering never
// waits for readers; the handle is released when the last FlowRef of it is gone (a plugin's code
// itself stays mapped: the loader never unloads it). Snapshots themselves never keep a handle
// alive, so a reader thread that has gone idle pins nothing.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/subscription.hpp"

namespace flowreg {

// What a module registers: all of its flows at once.
struct Module {
  std::string name;                  // a slug (validate.hpp)
  std::string source;                // the file it comes from, for messages ("" if none)
  std::vector<FlowDef> flows;        // each flow's `module` is set to `name` on registration
  std::shared_ptr<const void> code;  // keeps the module's code loaded; nullptr for YAML modules
};

// A registered flow: its definition and version, and the module it belongs to. Immutable.
struct RegisteredFlow {
  FlowDef def;
  std::string version;  // flow_version(def)
  std::string module;
  std::string source;
  std::weak_ptr<const void> code;  // not owning: see FlowRef
};

// A flow kept alive past the lookup, with its module's code. Cheap to move, costs two atomic
// increments to take: take one per task, not per lookup.
class FlowRef {
 public:
  FlowRef() = default;
  explicit operator bool() const noexcept { return flow_ != nullptr; }
  const RegisteredFlow* operator->() const noexcept { return flow_.get(); }
  const RegisteredFlow& operator*() const noexcept { return *flow_; }
  const std::shared_ptr<const void>& code() const noexcept { return code_; }

 private:
  friend class FlowRegistry;
  FlowRef(std::shared_ptr<const RegisteredFlow> flow, std::shared_ptr<const void> code)
      : flow_(std::move(flow)), code_(std::move(code)) {}
  std::shared_ptr<const RegisteredFlow> flow_;
  std::shared_ptr<const void> code_;
};

struct ModuleEvent {
  enum class Kind { registered, replaced, unregistered };
  Kind kind;
  std::string module;
  std::string source;
  std::vector<std::string> flows;      // slugs of the module's flows after the change (before, for
                                       // unregistered)
  std::vector<std::string> old_flows;  // replaced: the slugs it had before
  std::string reason;                  // free text from the caller ("file removed", ...)
};
std::string_view to_string(ModuleEvent::Kind kind) noexcept;

class FlowRegistry {
  struct Snapshot;

 public:
  using Listener = std::function<void(const ModuleEvent&)>;

  FlowRegistry();
  ~FlowRegistry();
  FlowRegistry(const FlowRegistry&) = delete;
  FlowRegistry& operator=(const FlowRegistry&) = delete;

  // Registers all flows of `module` or none. Errors: Errc::invalid_definition (every problem of
  // every flow, in Error::details), Errc::duplicate_module, Errc::duplicate_slug (the existing
  // registration wins; the message names both modules and their files).
  Result<void> register_module(Module module, std::string_view reason = "registered");
  // Swaps a registered module for a new version atomically (registers it when absent). Readers see
  // either the old or the new flows, never a mix.
  Result<void> replace_module(Module module, std::string_view reason = "replaced");
  // Removes a module and all its flows. Errc::not_found when absent.
  Result<void> unregister_module(std::string_view name, std::string_view reason = "unregistered");

  // Lookup by slug on the hot path: lock-free, no shared writes. The pointer stays valid until the
  // calling thread's next call of find() on this registry; take get() to keep a flow longer.
  const RegisteredFlow* find(std::string_view slug) const noexcept;
  // The flow and its module's code, kept alive as long as the FlowRef; empty when not registered.
  FlowRef get(std::string_view slug) const;
  // A module's flows in declaration order; empty when the module is not registered.
  std::vector<FlowRef> module_flows(std::string_view module) const;
  // Every flow, sorted by slug.
  std::vector<FlowRef> list() const;
  // Names of registered modules, sorted.
  std::vector<std::string> modules() const;
  std::size_t size() const noexcept;

  // `listener` hears every module change made after this call until the Subscription dies, with the
  // delivery guarantee of subscription.hpp: in the order of the changes, one at a time, after the
  // change is visible to readers and before the call that made it returns, with no lock held (a
  // listener may read and change this registry). Failed changes are not reported.
  [[nodiscard]] Subscription subscribe(Listener listener);

  // A reader with its own snapshot cache, for a thread that looks flows up in a loop (a worker's
  // claim loop): no thread_local access at all. Not thread-safe itself; one per thread.
  class Reader {
   public:
    explicit Reader(const FlowRegistry& registry) : registry_(&registry) {}
    const RegisteredFlow* find(std::string_view slug) noexcept;

   private:
    const FlowRegistry* registry_;
    std::uint64_t version_ = 0;
    std::shared_ptr<const Snapshot> snapshot_;
  };

 private:
  friend class Reader;
  Result<void> apply(Module module, bool replace, std::string_view reason);
  std::shared_ptr<const Snapshot> load() const;  // the current snapshot (takes a short lock)
  const Snapshot* thread_snapshot() const noexcept;
  static FlowRef make_ref(const std::shared_ptr<const RegisteredFlow>& flow);

  struct State;
  const std::uint64_t id_;  // never reused; keys the per-thread caches
  std::atomic<std::uint64_t> version_{1};
  std::unique_ptr<State> state_;
};

}  // namespace flowreg
