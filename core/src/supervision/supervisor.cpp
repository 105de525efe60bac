#include "flowreg/tools/supervisor.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "util/enum_names.hpp"

namespace flowreg {

namespace detail {

namespace {

// The core whose event thread this is, or nullptr: how calls that would wait for the event thread
// notice they run on it.
thread_local const SupervisorCore* current_core = nullptr;

std::string single_quoted(std::string_view text) { return "'" + std::string(text) + "'"; }

}  // namespace

// The state of one supervisor, shared by the Supervisor (its owner), the event thread, and weakly
// by ExitSignals and ChildHandles (which must not keep it alive).
//
// Everything that changes the children runs on the event thread (run()), one message at a time.
// mu_ guards what other threads read or append: the state, the mailbox and the list of children.
// Fields documented "event thread only" need no lock. mu_ is never held while a start function,
// Service::stop(), on_event or a parent's ExitSignal runs. Lock order: mu_, then a ChildHandle's.
class SupervisorCore final : public std::enable_shared_from_this<SupervisorCore> {
 public:
  SupervisorCore(SupervisorOptions options, ExitSignal parent)
      : options_(std::move(options)), parent_(std::move(parent)) {}
  SupervisorCore(const SupervisorCore&) = delete;
  SupervisorCore& operator=(const SupervisorCore&) = delete;
  SupervisorCore(SupervisorCore&&) = delete;
  SupervisorCore& operator=(SupervisorCore&&) = delete;
  ~SupervisorCore() = default;

  const std::string& name() const noexcept { return options_.name; }

  // REQUIRES: called before the event thread exists (by Supervisor::start).
  Result<void> add_static(ChildSpec spec) {
    if (auto valid = check_spec(spec); !valid) return valid;
    if (find_by_name(spec.name)) {
      return make_error(Errc::invalid_argument,
                        prefix() + "two children are named " + single_quoted(spec.name));
    }
    auto c = make_child(std::move(spec));
    MutexLock lock(mu_);
    children_.push_back(std::move(c));
    return {};
  }

  // The event thread's body: starts the static children, reports the outcome through `init`, then
  // handles messages until stopped or it gives up.
  void run(std::promise<Result<void>> init) {
    current_core = this;
    Result<void> started = start_static();
    const bool ok = started.has_value();
    init.set_value(std::move(started));
    if (!ok) return;
    for (;;) {
      Message message;
      {
        MutexLock lock(mu_);
        while (mailbox_.empty() && state_ == State::running) cv_.wait(lock);
        if (state_ != State::running) break;
        message = std::move(mailbox_.front());
        mailbox_.pop_front();
      }
      if (!handle(message)) return;  // gave up: already shut down
    }
    shutdown(std::nullopt);
  }

  // ExitSignal's report. Never waits for the event thread.
  void report_exit(std::uint64_t child, std::uint64_t generation, std::optional<Error> reason) {
    {
      MutexLock lock(mu_);
      if (state_ != State::running) return;
      mailbox_.emplace_back(ExitMsg{child, generation, std::move(reason)});
    }
    cv_.notify_all();
  }

  void request_stop() {
    {
      MutexLock lock(mu_);
      if (state_ == State::running) state_ = State::stopping;
    }
    cv_.notify_all();
  }

  bool on_event_thread() const noexcept { return current_core == this; }

  Result<std::shared_ptr<ChildHandle>> start_child(ChildSpec spec) {
    if (auto valid = check_spec(spec); !valid) return tl::unexpected(std::move(valid.error()));
    if (on_event_thread()) {
      return make_error(Errc::invalid_argument,
                        prefix() + "start_child(" + single_quoted(spec.name) +
                            ") called from the supervisor's own thread, where it would wait for "
                            "itself");
    }
    std::promise<Result<std::shared_ptr<ChildHandle>>> reply;
    auto result = reply.get_future();
    {
      MutexLock lock(mu_);
      if (state_ != State::running) return not_running();
      mailbox_.emplace_back(
          StartChildMsg{std::make_shared<const ChildSpec>(std::move(spec)), std::move(reply)});
    }
    cv_.notify_all();
    return result.get();
  }

  // By name (id == 0) for terminate_child(), or the slot `id` for ChildHandle::stop(), which does
  // not wait when called from the event thread (wait == false).
  Result<void> terminate(std::string name, std::uint64_t id, bool wait) {
    if (wait && on_event_thread()) {
      return make_error(Errc::invalid_argument,
                        prefix() + "terminate_child(" + single_quoted(name) +
                            ") called from the supervisor's own thread, where it would wait for "
                            "itself");
    }
    std::optional<std::promise<Result<void>>> reply;
    std::future<Result<void>> result;
    if (wait) {
      reply.emplace();
      result = reply->get_future();
    }
    {
      MutexLock lock(mu_);
      if (state_ != State::running) return not_running();
      mailbox_.emplace_back(TerminateMsg{std::move(name), id, std::move(reply)});
    }
    cv_.notify_all();
    if (!wait) return {};
    return result.get();
  }

  std::optional<Error> wait() {
    MutexLock lock(mu_);
    while (state_ == State::running || state_ == State::stopping) cv_.wait(lock);
    return failure_;
  }

  bool running() const {
    MutexLock lock(mu_);
    return state_ == State::running;
  }

  std::vector<std::string> child_names() const {
    MutexLock lock(mu_);
    std::vector<std::string> names;
    names.reserve(children_.size());
    for (const auto& c : children_) names.push_back(c->spec->name);
    return names;
  }

  std::shared_ptr<ChildHandle> child(std::string_view name) const {
    const auto c = find_by_name(name);
    return c ? c->handle : nullptr;
  }

 private:
  enum class State {
    running,   // handling messages
    stopping,  // stop requested or giving up: no new messages; children being stopped
    stopped,   // through stop() (or start() failed): the event thread has finished its work
    failed,    // gave up: failure_ holds why
  };

  // One child slot. spec and handle never change; the rest is event thread only.
  struct Child {
    std::uint64_t id = 0;
    std::shared_ptr<const ChildSpec> spec;
    std::shared_ptr<ChildHandle> handle;
    std::shared_ptr<Service> instance;  // nullptr while not running
    std::uint64_t generation = 0;       // the running instance's; 0 when none
    bool removed = false;               // no longer in children_
  };

  struct ExitMsg {
    std::uint64_t child = 0;
    std::uint64_t generation = 0;
    std::optional<Error> reason;
  };
  // A restart whose start function failed, tried again after the messages already queued.
  struct RetryMsg {
    std::uint64_t child = 0;
    Error reason;
  };
  struct StartChildMsg {
    std::shared_ptr<const ChildSpec> spec;
    std::promise<Result<std::shared_ptr<ChildHandle>>> reply;
  };
  struct TerminateMsg {
    std::string name;
    std::uint64_t child = 0;  // when set, this slot only (name is for messages)
    std::optional<std::promise<Result<void>>> reply;
  };
  using Message = std::variant<ExitMsg, RetryMsg, StartChildMsg, TerminateMsg>;

  struct RestartRecord {
    std::chrono::steady_clock::time_point at;
    std::string child;
  };

  std::string prefix() const { return "supervisor " + single_quoted(options_.name) + ": "; }

  Result<void> check_spec(const ChildSpec& spec) const {
    if (spec.name.empty()) {
      return make_error(Errc::invalid_argument, prefix() + "a child has an empty name");
    }
    if (!spec.start) {
      return make_error(Errc::invalid_argument,
                        prefix() + "child " + single_quoted(spec.name) + " has no start function");
    }
    return {};
  }

  tl::unexpected<Error> not_running() const {
    return make_error(Errc::not_started, prefix() + "not running (stopped or gave up)");
  }

  // Event thread only (or before it exists).
  std::shared_ptr<Child> make_child(ChildSpec spec) {
    auto c = std::make_shared<Child>();
    c->id = next_child_id_++;
    c->handle = std::shared_ptr<ChildHandle>(new ChildHandle(spec.name, c->id, weak_from_this()));
    c->spec = std::make_shared<const ChildSpec>(std::move(spec));
    return c;
  }

  std::shared_ptr<Child> find_by_name(std::string_view name) const {
    MutexLock lock(mu_);
    for (const auto& c : children_) {
      if (c->spec->name == name) return c;
    }
    return nullptr;
  }

  std::shared_ptr<Child> find(std::uint64_t id) const {
    MutexLock lock(mu_);
    for (const auto& c : children_) {
      if (c->id == id) return c;
    }
    return nullptr;
  }

  std::vector<std::shared_ptr<Child>> snapshot() const {
    MutexLock lock(mu_);
    return children_;
  }

  bool stop_requested() const {
    MutexLock lock(mu_);
    return state_ != State::running;
  }

  void emit(SupervisorEventKind kind, std::string child, std::optional<Error> reason) noexcept {
    if (!options_.on_event) return;
    options_.on_event(SupervisorEvent{kind, options_.name, std::move(child), std::move(reason)});
  }

  std::chrono::steady_clock::time_point now() const {
    return options_.now ? options_.now() : std::chrono::steady_clock::now();
  }

  // Calls c's start function; on success c runs the new instance. The error names supervisor and
  // child and keeps the start function's code. Event thread only.
  Result<void> start_instance(Child& c) {
    const std::uint64_t generation = next_generation_++;
    Result<std::shared_ptr<Service>> started =
        call_start(*c.spec, ExitSignal(weak_from_this(), c.id, generation));
    if (started && !*started) {
      started = make_error(Errc::internal, "the start function returned no service");
    }
    if (!started) {
      Error error = std::move(started.error());
      error.message =
          prefix() + "child " + single_quoted(c.spec->name) + " failed to start: " + error.message;
      return tl::unexpected(std::move(error));
    }
    c.instance = std::move(*started);
    c.generation = generation;
    c.handle->set_service(c.instance);
    return {};
  }

  static Result<std::shared_ptr<Service>> call_start(const ChildSpec& spec, ExitSignal signal) {
    try {
      return spec.start(std::move(signal));
    } catch (const std::exception& e) {
      return make_error(Errc::internal, std::string("the start function threw: ") + e.what());
    } catch (...) {
      return make_error(Errc::internal, "the start function threw a non-std exception");
    }
  }

  // Stops c's running instance, if any; reports from it are stale from here on. Event thread only.
  static void stop_instance(Child& c) {
    std::shared_ptr<Service> instance = std::exchange(c.instance, nullptr);
    c.generation = 0;
    if (!instance) return;
    c.handle->set_service(nullptr);
    instance->stop();
  }

  // Takes c out of the children (its handle dies). Event thread only.
  void remove(Child& c) {
    MutexLock lock(mu_);
    children_.erase(std::remove_if(children_.begin(), children_.end(),
                                   [&](const auto& p) { return p.get() == &c; }),
                    children_.end());
    c.removed = true;
    c.handle->mark_dead();
  }

  void enqueue_retry(std::uint64_t child, Error reason) {
    MutexLock lock(mu_);
    if (state_ != State::running) return;
    mailbox_.emplace_back(RetryMsg{child, std::move(reason)});
  }

  Result<void> start_static() {
    const auto all = snapshot();
    for (std::size_t i = 0; i < all.size(); ++i) {
      if (Result<void> started = start_instance(*all[i]); !started) {
        emit(SupervisorEventKind::start_failed, all[i]->spec->name, started.error());
        for (std::size_t j = i; j-- > 0;) stop_instance(*all[j]);
        std::deque<Message> dropped;
        {
          MutexLock lock(mu_);
          state_ = State::stopped;
          for (const auto& c : children_) c->handle->mark_dead();
          children_.clear();
          dropped.swap(mailbox_);  // exit reports only: nobody else can reach the core yet
        }
        cv_.notify_all();
        return started;
      }
      emit(SupervisorEventKind::child_started, all[i]->spec->name, std::nullopt);
    }
    return {};
  }

  // Returns false when the supervisor gave up (it is shut down).
  bool handle(Message& message) {
    return std::visit(
        [this](auto& m) -> bool {
          using M = std::decay_t<decltype(m)>;
          if constexpr (std::is_same_v<M, ExitMsg>) {
            return on_exit(m);
          } else if constexpr (std::is_same_v<M, RetryMsg>) {
            return on_retry(m);
          } else if constexpr (std::is_same_v<M, StartChildMsg>) {
            on_start_child(m);
            return true;
          } else {
            on_terminate(m);
            return true;
          }
        },
        message);
  }

  bool on_exit(ExitMsg& m) {
    const auto c = find(m.child);
    if (!c || m.generation == 0 || c->generation != m.generation) return true;  // stale
    stop_instance(*c);                                                          // joins its threads
    emit(SupervisorEventKind::child_exited, c->spec->name, m.reason);
    const RestartPolicy policy = c->spec->restart;
    if (policy == RestartPolicy::temporary || (policy == RestartPolicy::transient && !m.reason)) {
      remove(*c);
      emit(SupervisorEventKind::child_removed, c->spec->name, std::move(m.reason));
      return true;
    }
    return restart(c, m.reason);
  }

  bool on_retry(RetryMsg& m) {
    const auto c = find(m.child);
    if (!c || c->instance) return true;  // removed, or restarted with a sibling meanwhile
    return restart(c, std::move(m.reason));
  }

  void on_start_child(StartChildMsg& m) {
    if (find_by_name(m.spec->name)) {  // only this thread adds children
      m.reply.set_value(make_error(Errc::invalid_argument,
                                   prefix() + "a child named " + single_quoted(m.spec->name) + " exists"));
      return;
    }
    auto c = make_child(*m.spec);
    if (Result<void> started = start_instance(*c); !started) {
      c->handle->mark_dead();
      emit(SupervisorEventKind::start_failed, c->spec->name, started.error());
      m.reply.set_value(tl::unexpected(std::move(started.error())));
      return;
    }
    {
      MutexLock lock(mu_);
      children_.push_back(c);
    }
    emit(SupervisorEventKind::child_started, c->spec->name, std::nullopt);
    m.reply.set_value(c->handle);
  }

  void on_terminate(TerminateMsg& m) {
    const std::shared_ptr<Child> c = m.child != 0 ? find(m.child) : find_by_name(m.name);
    if (!c) {
      if (m.reply) {
        m.reply->set_value(make_error(Errc::not_found, prefix() + "no child " + single_quoted(m.name)));
      }
      return;
    }
    remove(*c);
    stop_instance(*c);
    emit(SupervisorEventKind::child_removed, c->spec->name, std::nullopt);
    if (m.reply) m.reply->set_value({});
  }

  // Records a restart caused by `exited` (no instance running) and applies the strategy; gives
  // up (shuts down) past the limit. Returns false when it gave up. Event thread only.
  bool restart(const std::shared_ptr<Child>& exited, std::optional<Error> reason) {
    const auto at = now();
    while (!restarts_.empty() && at - restarts_.front().at >= options_.limit.period) {
      restarts_.pop_front();
    }
    restarts_.push_back({at, exited->spec->name});
    if (restarts_.size() > static_cast<std::size_t>(options_.limit.max_restarts)) {
      shutdown(limit_error(exited->spec->name, reason));
      return false;
    }

    std::vector<std::shared_ptr<Child>> affected;
    {
      MutexLock lock(mu_);
      const auto self = std::find(children_.begin(), children_.end(), exited);
      switch (options_.strategy) {
        case RestartStrategy::one_for_one:
          affected.push_back(exited);
          break;
        case RestartStrategy::rest_for_one:
          affected.assign(self, children_.end());
          break;
        case RestartStrategy::one_for_all:
          affected = children_;
          break;
      }
    }
    // Siblings first stop, last started first; temporary ones are not restarted.
    for (auto it = affected.rbegin(); it != affected.rend(); ++it) {
      Child& c = **it;
      if (&c == exited.get() || !c.instance) continue;
      stop_instance(c);
      if (c.spec->restart == RestartPolicy::temporary) {
        remove(c);
        emit(SupervisorEventKind::child_removed, c.spec->name, std::nullopt);
      }
    }
    for (const auto& c : affected) {
      if (stop_requested()) return true;
      if (c->removed || c->instance) continue;
      if (Result<void> started = start_instance(*c); !started) {
        emit(SupervisorEventKind::start_failed, c->spec->name, started.error());
        enqueue_retry(c->id, std::move(started.error()));  // the rest waits for its restart
        return true;
      }
      emit(SupervisorEventKind::child_restarted, c->spec->name, std::nullopt);
    }
    return true;
  }

  Error limit_error(const std::string& child, const std::optional<Error>& reason) const {
    const bool all_this_child =
        std::all_of(restarts_.begin(), restarts_.end(),
                    [&](const RestartRecord& r) { return r.child == child; });
    const std::string count = std::to_string(restarts_.size());
    const std::string within = " within " + std::to_string(options_.limit.period.count()) +
                               " ms (limit " + std::to_string(options_.limit.max_restarts) + ")";
    std::string message = prefix();
    if (all_this_child) {
      message += "child " + single_quoted(child) + " ended " + count +
                 (restarts_.size() == 1 ? " time" : " times") + within;
    } else {
      message += count + " restarts" + within + ", the last for child " + single_quoted(child);  // >= 2
    }
    message += "; last: " + (reason ? reason->message : std::string("ended without an error"));
    return Error{Errc::internal, std::move(message), {}};
  }

  // Stops every child (last started first) and ends the supervisor: stopped, or failed with
  // `failure` (then the parent is signalled). Pending start_child/terminate_child calls fail with
  // Errc::not_started before any child is stopped, so that a child thread waiting in one of them
  // does not wait for its own stop(). Event thread only.
  void shutdown(std::optional<Error> failure) {
    std::deque<Message> pending;
    std::vector<std::shared_ptr<Child>> all;
    {
      MutexLock lock(mu_);
      state_ = State::stopping;
      pending.swap(mailbox_);
      for (const auto& c : children_) c->handle->mark_dead();
      all = children_;
    }
    for (Message& message : pending) {
      if (auto* start = std::get_if<StartChildMsg>(&message)) {
        start->reply.set_value(not_running());
      } else if (auto* stop = std::get_if<TerminateMsg>(&message); stop && stop->reply) {
        stop->reply->set_value(not_running());
      }
    }
    for (auto it = all.rbegin(); it != all.rend(); ++it) stop_instance(**it);
    {
      MutexLock lock(mu_);
      children_.clear();
    }
    if (failure) {
      emit(SupervisorEventKind::limit_reached,
           restarts_.empty() ? std::string() : restarts_.back().child, failure);
    } else {
      emit(SupervisorEventKind::stopped, std::string(), std::nullopt);
    }
    {
      MutexLock lock(mu_);
      state_ = failure ? State::failed : State::stopped;
      failure_ = failure;
    }
    cv_.notify_all();
    if (failure) parent_(std::move(failure));
  }

  const SupervisorOptions options_;
  const ExitSignal parent_;

  mutable AnnotatedMutex mu_;
  std::condition_variable_any cv_;  // mailbox_ or state_ changed
  State state_ FLOWREG_GUARDED_BY(mu_) = State::running;
  std::optional<Error> failure_ FLOWREG_GUARDED_BY(mu_);
  std::deque<Message> mailbox_ FLOWREG_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Child>> children_ FLOWREG_GUARDED_BY(mu_);  // start order

  // Event thread only (or before it exists).
  std::uint64_t next_child_id_ = 1;
  std::uint64_t next_generation_ = 1;
  std::deque<RestartRecord> restarts_;  // within the period, oldest first
};

}  // namespace detail

namespace {

constexpr detail::EnumName<SupervisorEventKind> kEventKindNames[] = {
    {SupervisorEventKind::child_started, "child_started"},
    {SupervisorEventKind::child_exited, "child_exited"},
    {SupervisorEventKind::child_restarted, "child_restarted"},
    {SupervisorEventKind::child_removed, "child_removed"},
    {SupervisorEventKind::start_failed, "start_failed"},
    {SupervisorEventKind::limit_reached, "limit_reached"},
    {SupervisorEventKind::stopped, "stopped"}};

}  // namespace

std::string_view to_string(SupervisorEventKind kind) noexcept {
  return detail::name_in(kEventKindNames, kind);
}

// ExitSignal

struct ExitSignal::Callback {
  explicit Callback(std::function<void(std::optional<Error>)> f) : fn(std::move(f)) {}
  const std::function<void(std::optional<Error>)> fn;
  std::atomic<bool> fired{false};
};

ExitSignal::ExitSignal(std::function<void(std::optional<Error>)> on_exit)
    : callback_(on_exit ? std::make_shared<Callback>(std::move(on_exit)) : nullptr) {}

ExitSignal::ExitSignal(std::weak_ptr<detail::SupervisorCore> core, std::uint64_t child,
                       std::uint64_t generation)
    : core_(std::move(core)), child_(child), generation_(generation) {}

void ExitSignal::operator()(std::optional<Error> reason) const {
  if (callback_) {
    if (!callback_->fired.exchange(true)) callback_->fn(std::move(reason));
    return;
  }
  if (auto core = core_.lock()) core->report_exit(child_, generation_, std::move(reason));
}

// ChildHandle

ChildHandle::ChildHandle(std::string name, std::uint64_t id,
                         std::weak_ptr<detail::SupervisorCore> core)
    : name_(std::move(name)), id_(id), core_(std::move(core)) {}

bool ChildHandle::alive() const {
  detail::MutexLock lock(mu_);
  return alive_;
}

void ChildHandle::stop() {
  if (!alive()) return;
  if (auto core = core_.lock()) (void)core->terminate(name_, id_, !core->on_event_thread());
}

std::shared_ptr<Service> ChildHandle::service() const {
  detail::MutexLock lock(mu_);
  return service_;
}

void ChildHandle::set_service(std::shared_ptr<Service> service) {
  detail::MutexLock lock(mu_);
  if (alive_) service_ = std::move(service);
}

void ChildHandle::mark_dead() {
  detail::MutexLock lock(mu_);
  alive_ = false;
  service_.reset();
}

// Supervisor

Supervisor::Supervisor(std::shared_ptr<detail::SupervisorCore> core) : core_(std::move(core)) {}

Result<std::shared_ptr<Supervisor>> Supervisor::start(SupervisorOptions options,
                                                      std::vector<ChildSpec> children,
                                                      ExitSignal parent) {
  const std::string prefix = "supervisor '" + options.name + "': ";
  if (options.limit.max_restarts < 0 || options.limit.period.count() <= 0) {
    return make_error(Errc::invalid_argument,
                      prefix + "invalid restart limit: max_restarts " +
                          std::to_string(options.limit.max_restarts) + " (>= 0), period " +
                          std::to_string(options.limit.period.count()) + " ms (> 0)");
  }
  auto core = std::make_shared<detail::SupervisorCore>(std::move(options), std::move(parent));
  for (ChildSpec& spec : children) {
    if (auto added = core->add_static(std::move(spec)); !added) {
      return tl::unexpected(std::move(added.error()));
    }
  }
  std::shared_ptr<Supervisor> supervisor(new Supervisor(core));
  std::promise<Result<void>> init;
  std::future<Result<void>> started = init.get_future();
  try {
    detail::MutexLock lock(supervisor->join_mu_);
    supervisor->thread_ =
        std::thread([core, init = std::move(init)]() mutable { core->run(std::move(init)); });
  } catch (const std::system_error& e) {
    return make_error(Errc::internal, prefix + "cannot create its thread: " + e.what());
  }
  if (Result<void> ok = started.get(); !ok) {
    supervisor->stop();  // joins the thread, which has stopped the children already started
    return tl::unexpected(std::move(ok.error()));
  }
  return supervisor;
}

ChildSpec Supervisor::child_spec(SupervisorOptions options, std::vector<ChildSpec> children,
                                 RestartPolicy restart) {
  std::string name = options.name;
  auto start = [options = std::move(options), children = std::move(children)](
                   ExitSignal parent) -> Result<std::shared_ptr<Service>> {
    auto started = Supervisor::start(options, children, std::move(parent));
    if (!started) return tl::unexpected(std::move(started.error()));
    return std::shared_ptr<Service>(std::move(*started));
  };
  return ChildSpec{std::move(name), std::move(start), restart};
}

Supervisor::~Supervisor() {
  core_->request_stop();
  detail::MutexLock lock(join_mu_);
  if (!thread_.joinable()) return;
  if (core_->on_event_thread()) {
    thread_.detach();  // it holds the core and finishes stopping on its own
  } else {
    thread_.join();
  }
}

Result<std::shared_ptr<ChildHandle>> Supervisor::start_child(ChildSpec spec) {
  return core_->start_child(std::move(spec));
}

Result<void> Supervisor::terminate_child(std::string_view name) {
  return core_->terminate(std::string(name), 0, true);
}

void Supervisor::stop() noexcept {
  core_->request_stop();
  if (core_->on_event_thread()) return;
  detail::MutexLock lock(join_mu_);
  if (thread_.joinable()) thread_.join();
}

std::optional<Error> Supervisor::wait() { return core_->wait(); }

bool Supervisor::running() const { return core_->running(); }

const std::string& Supervisor::name() const noexcept { return core_->name(); }

std::vector<std::string> Supervisor::children() const { return core_->child_names(); }

std::shared_ptr<ChildHandle> Supervisor::child(std::string_view name) const {
  return core_->child(name);
}

}  // namespace flowreg
