#include "worker/worker.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "flowreg/handle_registry.hpp"
#include "worker/flow_loop.hpp"

namespace flowreg::detail {

namespace {

using LoopRegistry = HandleRegistry<std::string, ChildHandle, int>;

std::string default_worker_id() {
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  std::random_device rd;
  return fmt::format("{}:{}:{:06x}", host, getpid(), rd() & 0xffffffu);
}

void log_event(const SupervisorEvent& e) {
  const std::string reason = e.reason ? e.reason->format() : std::string();
  switch (e.kind) {
    case SupervisorEventKind::child_exited:
      spdlog::warn("{}: {} ended{}{}", e.supervisor, e.child, reason.empty() ? "" : ": ", reason);
      break;
    case SupervisorEventKind::child_restarted:
      spdlog::info("{}: {} restarted", e.supervisor, e.child);
      break;
    case SupervisorEventKind::start_failed:
      spdlog::warn("{}: {} could not start: {}", e.supervisor, e.child, reason);
      break;
    case SupervisorEventKind::limit_reached:
      spdlog::error("{}: restart limit reached: {}", e.supervisor, reason);
      break;
    default:
      spdlog::debug("{}: {} {}", e.supervisor, e.child, static_cast<int>(e.kind));
      break;
  }
}

// A flow version this worker can serve: registered, allowed by options.flows, every handler
// exported by a loaded plugin.
struct Servable {
  FlowKey key;
  FlowDef def;
  std::unordered_map<std::string, HandlerRef> handlers;  // by step slug
  std::string label() const { return key.slug + "@" + key.version; }
};

bool same_code(const std::unordered_map<std::string, HandlerRef>& a,
               const std::unordered_map<std::string, HandlerRef>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [step, ref] : a) {
    auto it = b.find(step);
    if (it == b.end() || !ref.same_code_as(it->second)) return false;
  }
  return true;
}

// NAME.registry
class RegistryService final : public Service {
 public:
  RegistryService() { (void)registry.start(); }
  void stop() noexcept override { registry.stop_all(); }
  LoopRegistry registry;
};

// NAME.flows
class FlowsService final : public Service {
 public:
  explicit FlowsService(std::shared_ptr<FlowSource> s) : source(std::move(s)) {}
  void stop() noexcept override {
    if (source->loader) source->loader->stop();
  }
  std::shared_ptr<FlowSource> source;
};

}  // namespace

// The tree's children find each other here; each sets its part when it starts. rest_for_one
// guarantees that a child's dependencies (the ones before it) are the current ones.
struct TreeSlots {
  std::mutex mu;
  std::shared_ptr<RegistryService> registry;
  std::shared_ptr<FlowsService> flows;
};

// NAME.loops: the dynamic supervisor of the flow loops, and the reconciler that follows the flow
// registry.
class LoopsService final : public Service {
 public:
  static Result<std::shared_ptr<LoopsService>> start(const WorkerOptions& options, Engine& engine,
                                                     TreeSlots& slots, ExitSignal exit) {
    std::shared_ptr<LoopsService> self(new LoopsService(options, engine));
    {
      std::lock_guard lock(slots.mu);
      self->registry_ = slots.registry;
      self->flows_ = slots.flows;
    }
    if (!self->registry_ || !self->flows_)
      return make_error(Errc::internal, options.name + ".loops: started before its siblings");
    SupervisorOptions sup;
    sup.name = options.name + ".loops";
    sup.strategy = RestartStrategy::one_for_one;
    sup.limit = options.loop_restarts;
    sup.on_event = options.on_event;
    auto dyn = Supervisor::start(std::move(sup), {}, std::move(exit));
    if (!dyn) return tl::unexpected(std::move(dyn.error()));
    self->supervisor_ = std::move(*dyn);
    self->subscription_ = self->flows_->source->registry->subscribe(
        [signal = self->signal_](const ModuleEvent&) { signal->poke(); });
    self->reconcile();
    self->thread_ = std::thread([raw = self.get()] { raw->reconciler_main(); });
    return self;
  }

  ~LoopsService() override { stop(); }

  void stop() noexcept override {
    signal_->stop();
    if (thread_.joinable()) thread_.join();
    subscription_.reset();
    if (supervisor_) supervisor_->stop();
  }

  Result<void> serve(std::string_view slug) {
    auto flow = flows_->source->registry->get(slug);
    if (!flow) return make_error(Errc::not_found, fmt::format("flow '{}' is not registered", slug));
    auto servable = servable_of(flow, /*warn=*/false);
    if (!servable)
      return make_error(Errc::not_found, fmt::format("flow '{}' is not served by this worker: {}",
                                                     slug, servable.error().message));
    return ensure(*servable);
  }

  std::vector<FlowKey> serving() const {
    std::vector<FlowKey> out;
    std::lock_guard lock(mu_);
    for (const auto& [label, served] : served_) {
      auto handle = registry_->registry.lookup(label);
      if (handle && handle->alive()) out.push_back(served.key);
    }
    return out;
  }

 private:
  // Wakes the reconciler; survives the service (the registry's listener may fire late).
  struct Signal {
    void poke() {
      {
        std::lock_guard lock(mu);
        dirty = true;
      }
      cv.notify_all();
    }
    void stop() {
      {
        std::lock_guard lock(mu);
        stopping = true;
      }
      cv.notify_all();
    }
    std::mutex mu;
    std::condition_variable cv;
    bool dirty = false;
    bool stopping = false;
  };

  LoopsService(const WorkerOptions& options, Engine& engine) : options_(options), engine_(engine) {}

  void reconciler_main() {
    for (;;) {
      {
        std::unique_lock lock(signal_->mu);
        signal_->cv.wait(lock, [&] { return signal_->dirty || signal_->stopping; });
        if (signal_->stopping) return;
        signal_->dirty = false;
      }
      reconcile();
    }
  }

  Result<Servable> servable_of(const FlowRef& flow, bool warn) {
    const FlowDef& def = flow->def;
    if (!options_.flows.empty() &&
        std::find(options_.flows.begin(), options_.flows.end(), def.slug) == options_.flows.end())
      return make_error(Errc::not_found, "not in this worker's --flows");
    Servable s{FlowKey{def.slug, flow->version}, def, {}};
    for (const auto& step : def.steps) {
      HandlerRef ref;
      if (flows_->source->loader) ref = flows_->source->loader->handler(step.handler);
      if (!ref) {
        std::string why =
            fmt::format("step '{}': handler '{}' is not exported by any loaded plugin", step.slug,
                        step.handler);
        if (warn && warned_.insert(s.label() + why).second)
          spdlog::warn("worker {}: not serving flow '{}': {}", engine_.worker_id(), def.slug, why);
        return make_error(Errc::not_found, std::move(why));
      }
      s.handlers.emplace(step.slug, std::move(ref));
    }
    return s;
  }

  Result<void> ensure(const Servable& s) {
    const std::string label = s.label();
    auto started = registry_->registry.get_or_start(label, [&]() {
      ChildSpec spec;
      spec.name = options_.name + ".loop:" + label;
      spec.restart = RestartPolicy::permanent;
      spec.start = [engine = &engine_, key = s.key, def = s.def,
                    handlers = s.handlers](ExitSignal exit) -> Result<std::shared_ptr<Service>> {
        auto loop = FlowLoop::start(*engine, def, std::make_shared<LoopState>(key, handlers),
                                    std::move(exit));
        if (!loop) return tl::unexpected(std::move(loop.error()));
        return std::shared_ptr<Service>(std::move(*loop));
      };
      return supervisor_->start_child(std::move(spec));
    });
    if (!started) return tl::unexpected(std::move(started.error()));
    std::lock_guard lock(mu_);
    served_.insert_or_assign(label, Served{s.key, s.handlers});
    return {};
  }

  void reconcile() {
    std::lock_guard reconciling(reconcile_mu_);
    std::map<std::string, Servable> desired;
    for (const auto& flow : flows_->source->registry->list()) {
      auto s = servable_of(flow, /*warn=*/true);
      if (s) desired.emplace(s->label(), std::move(*s));
    }
    std::vector<std::string> retire;
    {
      std::lock_guard lock(mu_);
      for (const auto& [label, served] : served_) {
        auto it = desired.find(label);
        if (it == desired.end() || !same_code(served.handlers, it->second.handlers))
          retire.push_back(label);
      }
    }
    for (const auto& label : retire) {
      spdlog::info("worker {}: stopping the loop of {} (flow {})", engine_.worker_id(), label,
                   desired.contains(label) ? "reloaded" : "removed");
      (void)registry_->registry.stop(label);
      std::lock_guard lock(mu_);
      served_.erase(label);
    }
    for (const auto& [label, s] : desired) {
      if (auto r = ensure(s); !r)
        spdlog::error("worker {}: cannot start the loop of {}: {}", engine_.worker_id(), label,
                      r.error().format());
    }
    engine_.set_served(serving());
  }

  struct Served {
    FlowKey key;
    std::unordered_map<std::string, HandlerRef> handlers;
  };

  const WorkerOptions& options_;
  Engine& engine_;
  std::shared_ptr<RegistryService> registry_;
  std::shared_ptr<FlowsService> flows_;
  std::shared_ptr<Supervisor> supervisor_;
  FlowRegistry::Subscription subscription_;
  std::shared_ptr<Signal> signal_ = std::make_shared<Signal>();
  std::thread thread_;
  std::mutex reconcile_mu_;
  mutable std::mutex mu_;
  std::map<std::string, Served> served_;  // guarded by mu_
  std::set<std::string> warned_;          // reconciler only
};

struct Worker::Impl {
  WorkerOptions options;
  FlowSourceFactory make_source;
  std::unique_ptr<Engine> engine;
  TreeSlots slots;
  std::mutex loops_mu;
  std::shared_ptr<LoopsService> loops;  // guarded by loops_mu
  std::shared_ptr<Supervisor> top;
  std::thread waiter;
  std::mutex mu;
  std::condition_variable cv;
  bool ended = false;            // guarded by mu
  std::optional<Error> failure;  // guarded by mu
  bool stopped = false;          // guarded by mu
  DrainReport report;
};

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Worker::~Worker() { stop(); }

Result<std::unique_ptr<Worker>> Worker::start(WorkerOptions options, FlowSourceFactory source) {
  if (options.worker_id.empty()) options.worker_id = default_worker_id();
  if (options.concurrency < 1 || options.batch_size < 1)
    return make_error(Errc::invalid_argument, "worker: concurrency and batch size must be >= 1");
  if (options.lease < Millis(100))
    return make_error(Errc::invalid_argument,
                      fmt::format("worker: a lease of {} ms is too short (at least 100 ms)",
                                  options.lease.count()));
  auto on_event = options.on_event;
  options.on_event = [on_event](const SupervisorEvent& e) {
    log_event(e);
    if (on_event) on_event(e);
  };
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->make_source = std::move(source);
  impl->engine = std::make_unique<Engine>(impl->options);
  Impl* raw = impl.get();
  const std::string& name = raw->options.name;

  std::vector<ChildSpec> children;
  children.push_back(ChildSpec{name + ".registry",
                               [raw](ExitSignal) -> Result<std::shared_ptr<Service>> {
                                 auto service = std::make_shared<RegistryService>();
                                 std::lock_guard lock(raw->slots.mu);
                                 raw->slots.registry = service;
                                 return std::shared_ptr<Service>(service);
                               },
                               RestartPolicy::permanent});
  children.push_back(ChildSpec{name + ".flows",
                               [raw](ExitSignal) -> Result<std::shared_ptr<Service>> {
                                 auto made = raw->make_source();
                                 if (!made) return tl::unexpected(std::move(made.error()));
                                 auto service = std::make_shared<FlowsService>(
                                     std::make_shared<FlowSource>(std::move(*made)));
                                 std::lock_guard lock(raw->slots.mu);
                                 raw->slots.flows = service;
                                 return std::shared_ptr<Service>(service);
                               },
                               RestartPolicy::permanent});
  children.push_back(ChildSpec{name + ".loops",
                               [raw](ExitSignal exit) -> Result<std::shared_ptr<Service>> {
                                 auto loops = LoopsService::start(raw->options, *raw->engine,
                                                                  raw->slots, std::move(exit));
                                 if (!loops) return tl::unexpected(std::move(loops.error()));
                                 std::lock_guard lock(raw->loops_mu);
                                 raw->loops = *loops;
                                 return std::shared_ptr<Service>(std::move(*loops));
                               },
                               RestartPolicy::permanent});

  SupervisorOptions top;
  top.name = name;
  top.strategy = RestartStrategy::rest_for_one;
  top.limit = raw->options.tree_restarts;
  top.on_event = raw->options.on_event;
  auto started = Supervisor::start(std::move(top), std::move(children));
  if (!started) {
    raw->engine->finish(SteadyTime::max());
    return tl::unexpected(std::move(started.error()));
  }
  raw->top = std::move(*started);
  raw->waiter = std::thread([raw] {
    auto failure = raw->top->wait();
    {
      std::lock_guard lock(raw->mu);
      raw->ended = true;
      raw->failure = std::move(failure);
    }
    raw->cv.notify_all();
  });
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

const std::string& Worker::id() const noexcept { return impl_->options.worker_id; }

std::vector<FlowKey> Worker::serving() const {
  std::shared_ptr<LoopsService> loops;
  {
    std::lock_guard lock(impl_->loops_mu);
    loops = impl_->loops;
  }
  if (!loops) return {};
  auto out = loops->serving();
  std::sort(out.begin(), out.end(),
            [](const FlowKey& a, const FlowKey& b) { return a.slug < b.slug; });
  return out;
}

Result<void> Worker::serve(std::string_view slug) {
  std::shared_ptr<LoopsService> loops;
  {
    std::lock_guard lock(impl_->loops_mu);
    loops = impl_->loops;
  }
  if (!loops) return make_error(Errc::not_started, "worker: its flow loops are not running");
  return loops->serve(slug);
}

std::optional<Error> Worker::wait_failure(Millis timeout) {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait_for(lock, timeout, [&] { return impl_->ended; });
  return impl_->failure;
}

void Worker::begin_drain() { impl_->engine->begin_drain(); }

int Worker::held() const { return impl_->engine->held(); }

DrainReport Worker::stop(SteadyTime pool_deadline) {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopped) return impl_->report;
    impl_->stopped = true;
  }
  impl_->top->stop();
  if (impl_->waiter.joinable()) impl_->waiter.join();
  {
    std::lock_guard lock(impl_->loops_mu);
    impl_->loops.reset();
  }
  impl_->report = impl_->engine->finish(pool_deadline);
  return impl_->report;
}

}  // namespace flowreg::detail
