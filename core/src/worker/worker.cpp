#include "worker/worker.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "config/json_schema.hpp"
#include "schedule/scheduler.hpp"
#include "util/host_name.hpp"
#include "worker/flow_service.hpp"
#include "worker/handler_process.hpp"
#include "worker/retainer.hpp"

namespace flowreg::detail {

namespace {

std::string default_worker_id() {
  std::random_device rd;
  return fmt::format("{}:{}:{:06x}", host_name(), getpid(), rd() & 0xffffffu);
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

using Handlers = std::unordered_map<std::string, HandlerRef>;  // by step slug

// A flow version this worker can serve: registered, allowed by options.flows, every handler
// exported by a loaded plugin.
struct Servable {
  FlowKey key;
  FlowDef def;
  Handlers handlers;
};

bool same_code(const Handlers& a, const Handlers& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [step, ref] : a) {
    auto it = b.find(step);
    if (it == b.end() || !ref.same_code_as(it->second)) return false;
  }
  return true;
}

// Wakes the reconciler; shared with the registry's listener, which may fire after the flow
// services stopped.
class Signal {
 public:
  void poke() {
    {
      MutexLock lock(mu_);
      dirty_ = true;
    }
    cv_.notify_all();
  }
  void stop() {
    {
      MutexLock lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
  }
  // Waits for a poke; false once stopped.
  bool wait() {
    MutexLock lock(mu_);
    while (!dirty_ && !stopping_) cv_.wait(lock);
    dirty_ = false;
    return !stopping_;
  }

 private:
  AnnotatedMutex mu_;
  std::condition_variable_any cv_;
  bool dirty_ FLOWREG_GUARDED_BY(mu_) = false;
  bool stopping_ FLOWREG_GUARDED_BY(mu_) = false;
};

// NAME.loops: a one_for_one supervisor of the flow services, and the reconciler that keeps one
// flow service per servable flow version of the registry.
class FlowServices final : public Service {
 public:
  static Result<std::shared_ptr<FlowServices>> start(const WorkerOptions& options, Engine& engine,
                                                     const FlowSource& source, ExitSignal exit) {
    std::shared_ptr<FlowServices> self(new FlowServices(options, engine, source));
    SupervisorOptions sup;
    sup.name = options.name + ".loops";
    sup.strategy = RestartStrategy::one_for_one;
    sup.limit = options.flow_restarts;
    sup.on_event = options.on_event;
    auto services = Supervisor::start(std::move(sup), {}, std::move(exit));
    if (!services) return tl::unexpected(std::move(services.error()));
    self->supervisor_ = std::move(*services);
    self->subscription_ = source.registry->subscribe(
        [signal = self->signal_](const ModuleEvent&) { signal->poke(); });
    self->reconcile();
    self->thread_ = std::thread([raw = self.get()] {
      while (raw->signal_->wait()) raw->reconcile();
    });
    return self;
  }

  ~FlowServices() override { stop(); }

  void stop() noexcept override {
    signal_->stop();
    if (thread_.joinable()) thread_.join();
    subscription_.reset();
    if (supervisor_) supervisor_->stop();
  }

  Result<void> serve(std::string_view slug) {
    auto flow = source_.registry->get(slug);
    if (!flow) return make_error(Errc::not_found, fmt::format("flow '{}' is not registered", slug));
    MutexLock lock(mu_);
    auto servable = servable_of(flow, /*warn=*/false);
    if (!servable)
      return make_error(Errc::not_found, fmt::format("flow '{}' is not served by this worker: {}",
                                                     slug, servable.error().message));
    return ensure(*servable);
  }

  std::vector<FlowKey> serving() const {
    MutexLock lock(mu_);
    return serving_locked();
  }

 private:
  // A flow version with a flow service, and the code that service runs.
  struct Served {
    FlowKey key;
    Handlers handlers;
    std::shared_ptr<ChildHandle> service;
    bool isolated = false;  // its handlers run in processes, with these limits
    HandlerLimits limits;
  };

  bool isolated(const FlowDef& def) const {
    return def.isolation.value_or(options_.isolation) == Isolation::process;
  }

  FlowServices(const WorkerOptions& options, Engine& engine, const FlowSource& source)
      : options_(options),
        engine_(engine),
        source_(source),
        pools_(std::make_shared<HandlerProcessPools>(
            options.handler_exe.empty() ? this_executable() : options.handler_exe,
            options.concurrency, options.max_output_bytes)) {
    // Heartbeats carry the pools' state (flowreg workers, the API, the dashboard); their
    // container outlives this object while the engine holds this function (a restart of the flow
    // services replaces it).
    engine.set_process_stats([pools = pools_]() -> std::optional<Json> {
      if (!pools->any()) return std::nullopt;
      const auto s = pools->stats();
      return Json{{"alive", s.alive},         {"busy", s.busy},
                  {"started", s.started},     {"crashed", s.crashed},
                  {"timed_out", s.timed_out}, {"killed_by_limit", s.killed_limit},
                  {"broken", s.broken}};
    });
  }

  // The file this process runs (named in `ps` for the handler processes), or /proc/self/exe.
  static std::filesystem::path this_executable() {
    std::error_code ec;
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec || !std::filesystem::exists(exe, ec) ? std::filesystem::path("/proc/self/exe") : exe;
  }

  std::vector<FlowKey> serving_locked() const FLOWREG_THREAD_ANNOTATION(requires_capability(mu_)) {
    std::vector<FlowKey> out;
    for (const auto& [name, served] : served_)
      if (served.service->alive()) out.push_back(served.key);
    return out;
  }

  Result<Servable> servable_of(const FlowRef& flow, bool warn)
      FLOWREG_THREAD_ANNOTATION(requires_capability(mu_)) {
    const FlowDef& def = flow->def;
    if (!options_.flows.empty() &&
        std::find(options_.flows.begin(), options_.flows.end(), def.slug) == options_.flows.end())
      return make_error(Errc::not_found, "not in this worker's --flows");
    Servable s{FlowKey{def.slug, flow->version}, def, {}};
    for (const auto& step : def.steps) {
      // No handler: the engine ends it (sleep_handler, wait_handler, child_handler).
      if (step.kind == StepKind::sleep || step.kind == StepKind::wait ||
          step.kind == StepKind::flow)
        continue;
      HandlerRef ref;
      if (source_.loader) ref = source_.loader->handler(step.handler);
      if (!ref) {
        std::string why =
            fmt::format("step '{}': handler '{}' is not exported by any loaded plugin", step.slug,
                        step.handler);
        if (warn && warned_.insert(label(s.key) + why).second)
          spdlog::warn("worker {}: not serving flow '{}': {}", engine_.worker_id(), def.slug, why);
        return make_error(Errc::not_found, std::move(why));
      }
      s.handlers.emplace(step.slug, std::move(ref));
    }
    return s;
  }

  // The flow service of `s`, started unless it runs.
  Result<void> ensure(const Servable& s) FLOWREG_THREAD_ANNOTATION(requires_capability(mu_)) {
    const std::string name = label(s.key);
    if (auto it = served_.find(name); it != served_.end() && it->second.service->alive()) return {};
    ChildSpec spec;
    spec.name = options_.name + ".loop:" + name;
    spec.restart = RestartPolicy::permanent;
    const bool process = isolated(s.def);
    const HandlerLimits limits = s.def.limits.over(options_.limits);
    spec.start = [engine = &engine_, key = s.key, def = s.def, handlers = s.handlers, process,
                  limits, pools = pools_, loader = std::weak_ptr<PluginLoader>(source_.loader)](
                     ExitSignal exit) -> Result<std::shared_ptr<Service>> {
      std::unordered_map<std::string, StepHandler> steps;
      std::vector<std::shared_ptr<HandlerProcessPool>> warm;
      for (const auto& [step, ref] : handlers) {
        auto& h = steps.emplace(step, step_handler(ref)).first->second;
        if (metrics::recording()) h.metrics = metrics::step_series(key.slug, step);
        if (process) {
          // A plugin whose handlers crash their processes again and again is quarantined, as
          // one that crashes while it loads.
          h.process = pools->get(ref, limits, [loader, code = ref](const std::string& reason) {
            if (auto l = loader.lock()) l->quarantine(code, reason);
          });
          h.process_index = ref.index();
          if (std::find(warm.begin(), warm.end(), h.process) == warm.end())
            warm.push_back(h.process);
        }
      }
      // A sleep step's task is claimed once its sleep has ended: it completes at once.
      for (const auto& step : def.steps)
        if (step.kind == StepKind::sleep) steps.emplace(step.slug, sleep_handler());
      // A wait step's task is its timeout's: claimed once it has ended, it ends the step.
      for (const auto& step : def.steps)
        if (step.kind == StepKind::wait) steps.emplace(step.slug, wait_handler(step));
      // A flow step's tasks are its children's ends (child_handler).
      for (const auto& step : def.steps)
        if (step.kind == StepKind::flow) steps.emplace(step.slug, child_handler());
      // One process per pool started now, so that the first task finds it warm.
      for (const auto& pool : warm)
        if (pool->stats().alive == 0) pool->prestart();
      auto service = FlowService::start(
          *engine, def, std::make_shared<FlowState>(key, std::move(steps)), std::move(exit));
      if (!service) return tl::unexpected(std::move(service.error()));
      return std::shared_ptr<Service>(std::move(*service));
    };
    auto started = supervisor_->start_child(std::move(spec));
    if (!started) return tl::unexpected(std::move(started.error()));
    served_.insert_or_assign(name, Served{s.key, s.handlers, std::move(*started), process, limits});
    return {};
  }

  // Stops the flow services of flow versions gone or reloaded (new code), starts the missing ones.
  void reconcile() {
    MutexLock lock(mu_);
    std::map<std::string, Servable> desired;
    for (const auto& flow : source_.registry->list()) {
      auto s = servable_of(flow, /*warn=*/true);
      if (s) desired.emplace(label(s->key), std::move(*s));
    }
    for (auto it = served_.begin(); it != served_.end();) {
      auto wanted = desired.find(it->first);
      // A change of isolation or limits restarts the flow service too: its handlers then run
      // elsewhere.
      if (wanted != desired.end() && same_code(it->second.handlers, wanted->second.handlers) &&
          it->second.isolated == isolated(wanted->second.def) &&
          (!it->second.isolated ||
           it->second.limits == wanted->second.def.limits.over(options_.limits))) {
        ++it;
        continue;
      }
      spdlog::info("worker {}: stopping the loop of {} (flow {})", engine_.worker_id(), it->first,
                   wanted != desired.end() ? "reloaded" : "removed");
      it->second.service->stop();
      it = served_.erase(it);
    }
    for (const auto& [name, s] : desired)
      if (auto r = ensure(s); !r)
        spdlog::error("worker {}: cannot start the loop of {}: {}", engine_.worker_id(), name,
                      r.error().format());
    engine_.set_served(serving_locked());
    metrics::registered_flows().set(static_cast<double>(source_.registry->list().size()));
  }

  const WorkerOptions& options_;
  Engine& engine_;
  const FlowSource& source_;
  // The handler processes of flows with isolation: process (a pool per plugin copy and limits).
  const std::shared_ptr<HandlerProcessPools> pools_;
  std::shared_ptr<Supervisor> supervisor_;
  Subscription subscription_;
  const std::shared_ptr<Signal> signal_ = std::make_shared<Signal>();
  std::thread thread_;         // the reconciler
  mutable AnnotatedMutex mu_;  // serializes reconciling and serve()
  std::map<std::string, Served> served_ FLOWREG_GUARDED_BY(mu_);  // by "slug@version"
  std::set<std::string> warned_ FLOWREG_GUARDED_BY(mu_);
};

}  // namespace

struct Worker::Impl {
  WorkerOptions options;
  std::unique_ptr<Engine> engine;
  FlowSource source;
  std::shared_ptr<Supervisor> top;  // NAME, whose one child is NAME.loops
  // Fires the due schedules of the flows served (stopped first: a draining worker fires none).
  std::unique_ptr<schedule::Scheduler> scheduler;
  std::unique_ptr<Retainer> retainer;

  AnnotatedMutex mu;
  std::condition_variable_any failed_cv;
  std::optional<Error> failure FLOWREG_GUARDED_BY(mu);
  bool stopped FLOWREG_GUARDED_BY(mu) = false;
  DrainReport report FLOWREG_GUARDED_BY(mu);

  std::shared_ptr<FlowServices> services() const {
    auto child = top->child(options.name + ".loops");
    return child ? std::dynamic_pointer_cast<FlowServices>(child->service()) : nullptr;
  }
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
  Impl* raw = impl.get();
  raw->options = std::move(options);
  raw->engine = std::make_unique<Engine>(raw->options, EngineParts::postgres(raw->options));
  auto made = source();
  if (!made) {
    raw->engine->finish(SteadyTime::max());
    return tl::unexpected(std::move(made.error()));
  }
  raw->source = std::move(*made);

  SupervisorOptions top;
  top.name = raw->options.name;
  top.strategy = RestartStrategy::one_for_one;
  top.limit = raw->options.tree_restarts;
  top.on_event = raw->options.on_event;
  ChildSpec services{
      raw->options.name + ".loops", [raw](ExitSignal exit) -> Result<std::shared_ptr<Service>> {
        auto started =
            FlowServices::start(raw->options, *raw->engine, raw->source, std::move(exit));
        if (!started) return tl::unexpected(std::move(started.error()));
        return std::shared_ptr<Service>(std::move(*started));
      }};
  ExitSignal gave_up([raw](std::optional<Error> reason) {
    {
      MutexLock lock(raw->mu);
      raw->failure = reason ? std::move(*reason) : Error{Errc::internal, "worker ended", {}};
    }
    raw->failed_cv.notify_all();
  });
  auto started = Supervisor::start(std::move(top), {std::move(services)}, std::move(gave_up));
  if (!started) {
    if (raw->source.loader) raw->source.loader->stop();
    raw->engine->finish(SteadyTime::max());
    return tl::unexpected(std::move(started.error()));
  }
  raw->top = std::move(*started);
  if (raw->options.schedules) {
    schedule::SchedulerOptions so;
    so.conninfo = raw->options.conninfo;
    so.worker_id = raw->options.worker_id;
    so.poll_interval = raw->options.poll_interval;
    // The flows' input schemas, compiled once per flow version; used by the scheduler's thread
    // alone.
    auto schemas = std::make_shared<std::map<std::string, std::shared_ptr<const JsonSchema>>>();
    raw->scheduler = std::make_unique<schedule::Scheduler>(std::move(so), [raw, schemas] {
      // The flow versions served now, with their definitions (a version the registry no longer
      // holds, being replaced, is left out until its service follows).
      std::vector<schedule::ServedFlow> out;
      auto running = raw->services();
      if (!running) return out;
      if (schemas->size() > 4096) schemas->clear();
      for (const auto& key : running->serving()) {
        auto flow = raw->source.registry->get(key.slug);
        if (!flow || flow->version != key.version) continue;
        schedule::ServedFlow served{key.version, flow->def, {}};
        if (flow->def.input_schema) {
          auto& schema = (*schemas)[key.slug + " " + key.version];
          if (!schema)
            if (auto compiled = JsonSchema::compile(*flow->def.input_schema))
              schema = std::make_shared<const JsonSchema>(std::move(*compiled));
          if (schema)
            served.input_problem =
                [schema](const nlohmann::json& input) -> std::optional<std::string> {
              auto problems = schema->validate(input);
              if (problems.empty()) return std::nullopt;
              return problems.front().message;
            };
        }
        out.push_back(std::move(served));
      }
      return out;
    });
  }
  if (raw->options.retention && raw->options.retention->enabled)
    raw->retainer = std::make_unique<Retainer>(raw->options.conninfo, raw->options.worker_id,
                                               *raw->options.retention);
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

const std::string& Worker::id() const noexcept { return impl_->options.worker_id; }

std::vector<FlowKey> Worker::serving() const {
  auto services = impl_->services();
  if (!services) return {};
  auto out = services->serving();
  std::sort(out.begin(), out.end(),
            [](const FlowKey& a, const FlowKey& b) { return a.slug < b.slug; });
  return out;
}

Result<void> Worker::serve(std::string_view slug) {
  auto services = impl_->services();
  if (!services) return make_error(Errc::not_started, "worker: its flow loops are not running");
  auto served = services->serve(slug);
  if (served && impl_->scheduler) impl_->scheduler->wake();
  return served;
}

std::optional<Error> Worker::wait_failure(Millis timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(impl_->mu);
  while (!impl_->failure && impl_->failed_cv.wait_until(lock, until) != std::cv_status::timeout) {
  }
  return impl_->failure;
}

bool Worker::await_heartbeat(Millis timeout) { return impl_->engine->await_heartbeat(timeout); }

std::optional<std::string> Worker::replacement_due() const {
  return impl_->engine->replacement_due();
}

void Worker::begin_replacing() { impl_->engine->begin_replacing(); }

void Worker::begin_drain() {
  if (impl_->scheduler) impl_->scheduler->stop();
  if (impl_->retainer) impl_->retainer->stop();
  impl_->engine->begin_drain();
}

int Worker::held() const { return impl_->engine->held(); }

DrainReport Worker::stop(SteadyTime pool_deadline) {
  {
    MutexLock lock(impl_->mu);
    if (impl_->stopped) return impl_->report;
    impl_->stopped = true;
  }
  if (impl_->scheduler) impl_->scheduler->stop();
  if (impl_->retainer) impl_->retainer->stop();
  impl_->top->stop();
  if (impl_->source.loader) impl_->source.loader->stop();
  const DrainReport report = impl_->engine->finish(pool_deadline);
  MutexLock lock(impl_->mu);
  impl_->report = report;
  return report;
}

}  // namespace flowreg::detail
