#pragma once
// flowreg::Supervisor: starts services that run their own threads, restarts them when they end,
// and gives up (and tells its own parent) when they end too often.
//
//   using namespace std::chrono_literals;
//   std::vector<flowreg::ChildSpec> children;
//   children.push_back({"registry", start_registry});              // permanent by default
//   children.push_back({"cache", start_cache});
//   children.push_back(flowreg::Supervisor::child_spec(            // a DynamicSupervisor
//       {.name = "apps", .limit = {20, 60s}}, {}));
//   auto tokens = flowreg::Supervisor::start(
//       {.name = "tokens", .strategy = flowreg::RestartStrategy::rest_for_one},
//       std::move(children));
//   if (!tokens) { ... tokens.error().message ... }    // names the child that failed to start
//   auto apps = std::dynamic_pointer_cast<flowreg::Supervisor>(
//       (*tokens)->child("apps")->service());              // the current instance
//   apps->start_child({"app:my-app", start_app_server, flowreg::RestartPolicy::transient});
//   ...
//   (*tokens)->stop();                                  // children stop in reverse start order
//
// Model. A child is a Service: something that runs on threads of its own until the supervisor
// stops it, or until it ends on its own and says so through the ExitSignal its start function got.
// The supervisor then restarts it (and siblings, per the RestartStrategy) according to its
// RestartPolicy, within a restart intensity (RestartLimit); past it, the supervisor stops every
// child, fails, and reports to its own parent through the ExitSignal it was started with, so
// supervisors nest into trees (Supervisor::child_spec makes a supervisor a child of another).
//
// Every change to the children (start, exit handling, restart, start_child, terminate_child,
// stop) happens on the supervisor's own event thread, one message at a time, in the order the
// messages arrived (exit reports, start_child and terminate_child calls). Start functions,
// Service::stop() and SupervisorOptions::on_event all run on that thread, with no lock held.
//
// A child whose start function fails during a restart is retried through the mailbox (try_again),
// each failure counting as one more exit against the restart intensity, so a child that can never
// start makes the supervisor give up rather than spin. A child cannot be killed:
// Service::stop() must return (there is no shutdown timeout), and a start function must return. A
// child that blocks there blocks its supervisor. The supervisor reports what it does through
// SupervisorOptions::on_event; ChildHandle shows a child's current instance.
//
// Deadlocks to avoid (the supervisor waits for its children while they run start functions and
// stop()): a start function, Service::stop() or on_event must not wait for this supervisor
// (start_child, terminate_child, stop, wait, ChildHandle::stop); the calls that would wait detect
// that they run on the event thread and fail or only request instead (see each one). A child's
// own threads may call those functions only while that child cannot be being stopped by this
// supervisor: the supervisor's stop() of the child would wait for the thread that waits for the
// supervisor. A child that wants to end reports through its ExitSignal, which never waits.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/thread_annotations.hpp"

namespace flowreg {

namespace detail {
class SupervisorCore;
}  // namespace detail

// Which siblings restart with a child that exited and is to be restarted.
enum class RestartStrategy {
  one_for_one,   // only that child
  rest_for_one,  // that child and every child started after it
  one_for_all,   // every child
};

// Whether a child that ended on its own is restarted.
enum class RestartPolicy {
  permanent,  // always
  transient,  // only when it ended with an error; removed when it ended normally
  temporary,  // never: it is removed (also when a sibling's restart stops it)
};

// Restart intensity: more than max_restarts restarts within period make the supervisor give up.
// A restart is counted once per exit that calls for it (a strategy restarting siblings too still
// counts one), and stays counted while now - its time < period. The limit is the supervisor's, for
// all its children together. The defaults: at most 3 restarts within 5 s. REQUIRES:
// max_restarts >= 0, period > 0 (Supervisor::start checks).
struct RestartLimit {
  int max_restarts = 3;
  std::chrono::milliseconds period{5000};
};

// A supervised child: runs (on its own threads) until stopped or until it ends on its own.
class Service {
 public:
  virtual ~Service() = default;
  // Asks the service to stop and waits until it has (threads joined). Called at most once per
  // instance by the supervisor, never from the service's own threads, also after the service
  // ended on its own (to join its threads). Must not wait for the supervisor.
  virtual void stop() noexcept = 0;
};

// Handed to a child's start function: how the child reports that it ended on its own (nullopt:
// normally; an Error: it failed). Copyable; every copy reports for the same child instance.
//
// Thread-safety: operator() may be called from any thread, including the child's own threads and
// its start function, concurrently. It never waits for the supervisor: it only enqueues a message.
// Only the first report of a given child instance counts; a report from an instance the
// supervisor already stopped or replaced, or after the supervisor stopped, is ignored. A report
// made inside the start function (before it returned) is handled once the start succeeded, and
// ignored if the start fails.
class ExitSignal {
 public:
  // A no-op signal (e.g. the parent of a top-level supervisor).
  ExitSignal() = default;
  // A signal that calls on_exit(reason) on the reporting thread, for the first report only (how a
  // top-level supervisor can tell the application it gave up, besides Supervisor::wait()).
  // on_exit must not throw, and must not wait for the reporter's supervisor.
  explicit ExitSignal(std::function<void(std::optional<Error>)> on_exit);

  void operator()(std::optional<Error> reason = std::nullopt) const;

 private:
  friend class detail::SupervisorCore;
  struct Callback;
  ExitSignal(std::weak_ptr<detail::SupervisorCore> core, std::uint64_t child,
             std::uint64_t generation);

  std::weak_ptr<detail::SupervisorCore> core_;  // empty: no supervisor (no-op or callback)
  std::uint64_t child_ = 0;                     // the child's slot
  std::uint64_t generation_ = 0;                // the instance within the slot
  std::shared_ptr<Callback> callback_;          // set by the callback constructor
};

struct ChildSpec {
  std::string name;  // unique among siblings; not empty
  // Starts one instance. Runs on the supervisor's event thread (see the deadlock rules above); may
  // throw (reported as Errc::internal) or fail; must not return a null service.
  std::function<Result<std::shared_ptr<Service>>(ExitSignal)> start;
  RestartPolicy restart = RestartPolicy::permanent;
};

enum class SupervisorEventKind {
  child_started,    // started by Supervisor::start() or start_child()
  child_exited,     // ended on its own (reason: its error, or none) and was stopped (joined)
  child_restarted,  // started again: after its own exit, or a sibling's per the strategy
  child_removed,    // left the supervisor: terminate_child(), or an exit that is not restarted
  start_failed,     // a start function failed (reason: the error, naming supervisor and child)
  limit_reached,    // gave up (child: the last to exit; reason: the error its parent gets)
  stopped,          // stopped through stop(), every child stopped (not after start() failed)
};

std::string_view to_string(SupervisorEventKind kind) noexcept;

struct SupervisorEvent {
  SupervisorEventKind kind = SupervisorEventKind::child_started;
  std::string supervisor;  // SupervisorOptions::name
  std::string child;       // empty for stopped
  std::optional<Error> reason;
};

struct SupervisorOptions {
  std::string name = "supervisor";  // in errors and events; a child_spec() uses it as child name
  RestartStrategy strategy = RestartStrategy::one_for_one;
  RestartLimit limit;
  // Hears every event, on the supervisor's event thread, one at a time, with no lock held. Must
  // not throw (the program terminates) and must not wait for this supervisor.
  std::function<void(const SupervisorEvent&)> on_event;
  // The clock of the restart intensity; default std::chrono::steady_clock::now. Called on the event
  // thread only.
  std::function<std::chrono::steady_clock::time_point()> now;
};

// A handle to one child slot, stable across restarts of that child (child(name) keeps returning
// the same object). Fits flowreg::HandleRegistry's Handle concept: stop() and alive().
//
// Does not keep the supervisor alive. Thread-safety: every member may be called concurrently from
// any thread. Not copyable or movable; shared through shared_ptr.
class ChildHandle {
 public:
  ChildHandle(const ChildHandle&) = delete;
  ChildHandle& operator=(const ChildHandle&) = delete;
  ChildHandle(ChildHandle&&) = delete;
  ChildHandle& operator=(ChildHandle&&) = delete;
  ~ChildHandle() = default;

  const std::string& name() const noexcept { return name_; }
  // False once the child was terminated or removed, or its supervisor stopped or failed (also
  // while the supervisor is stopping). True while it restarts. Cheap, never calls out.
  bool alive() const;
  // Terminates this child through its supervisor (as terminate_child, for this slot only: not a
  // later child of the same name) and returns once it is stopped. Idempotent; does nothing when
  // the child or supervisor is gone. From the supervisor's event thread (a start function, a
  // child's stop(), on_event) it only requests the termination. REQUIRES: not called from this
  // child's own threads (its stop() would wait for the caller).
  void stop();
  // The current instance: nullptr while the child restarts, after its removal, and once the
  // supervisor stopped. Use std::dynamic_pointer_cast for the concrete type.
  std::shared_ptr<Service> service() const;

 private:
  friend class detail::SupervisorCore;
  ChildHandle(std::string name, std::uint64_t id, std::weak_ptr<detail::SupervisorCore> core);
  void set_service(std::shared_ptr<Service> service);
  void mark_dead();

  const std::string name_;
  const std::uint64_t id_;  // the slot, unique within its supervisor
  const std::weak_ptr<detail::SupervisorCore> core_;
  mutable detail::AnnotatedMutex mu_;
  std::shared_ptr<Service> service_ FLOWREG_GUARDED_BY(mu_);
  bool alive_ FLOWREG_GUARDED_BY(mu_) = true;
};

// A supervisor: starts its children, restarts them when they end on their own, stops them.
//
// Thread-safety: every member may be called concurrently from any thread, with the exceptions
// each one states (mostly: not from the supervisor's own event thread, which start functions,
// children's stop() and on_event run on). Not copyable or movable; held through shared_ptr, which
// is also how it is a Service. Destroying the last reference stops it.
class Supervisor final : public Service {
 public:
  // Starts the static children in order (on the new supervisor's event thread). If one fails to
  // start, those started are stopped in reverse order and its error is returned, with its code
  // and a message naming supervisor and child ("supervisor 'tokens': child 'cache' failed to
  // start: ..."). Errc::invalid_argument for an invalid limit, or a child with an empty or
  // duplicate name or no start function (nothing is started then). `parent` is signalled, with the
  // error wait() returns, when this supervisor gives up (restart limit reached), so a Supervisor
  // can itself be a child of another: see child_spec(). Errc::internal when the thread cannot be
  // created.
  static Result<std::shared_ptr<Supervisor>> start(SupervisorOptions options,
                                                   std::vector<ChildSpec> children,
                                                   ExitSignal parent = {});

  // A ChildSpec, named options.name, whose start function starts a Supervisor with these options
  // and children (copies, for every restart), signalling its parent when it gives up.
  static ChildSpec child_spec(SupervisorOptions options, std::vector<ChildSpec> children,
                              RestartPolicy restart = RestartPolicy::permanent);

  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;
  Supervisor(Supervisor&&) = delete;
  Supervisor& operator=(Supervisor&&) = delete;
  // stop(). From its own event thread (the last reference dropped there) the thread is detached
  // instead of joined; it finishes stopping on its own.
  ~Supervisor() override;

  // Adds a child after the existing ones and starts it (a DynamicSupervisor is a Supervisor with
  // no static children and one_for_one); returns once it has started (event child_started
  // delivered). Errors: Errc::invalid_argument for an empty or duplicate name, a missing start
  // function, or a call from the supervisor's own event thread (it would wait for itself);
  // Errc::not_started when the supervisor is stopping, stopped or failed; the start function's
  // error otherwise (its code, the message prefixed as in start()), and nothing is added.
  Result<std::shared_ptr<ChildHandle>> start_child(ChildSpec spec);

  // Stops the child named `name` and removes it (event child_removed); returns once it is
  // stopped. Errc::not_found when there is no such child; Errc::not_started when the supervisor
  // is stopping, stopped or failed; Errc::invalid_argument from the supervisor's own event thread.
  Result<void> terminate_child(std::string_view name);

  // Stops the children in reverse start order, then the event thread (event stopped). Returns once
  // done; idempotent, and concurrent calls all return once it is done. After a give-up it only
  // joins the thread. From the supervisor's own event thread it only requests the stop. REQUIRES:
  // not called from a child's own threads (see the deadlock rules above).
  void stop() noexcept override;

  // Blocks until this supervisor ended: nullopt when it stopped, the error when it gave up (also
  // after a stop() that came later). REQUIRES: not called from its own event thread.
  std::optional<Error> wait();

  // True until a stop was requested or the supervisor gave up.
  bool running() const;
  const std::string& name() const noexcept;
  // Names of the children in start order (restarts keep the order; start_child appends); empty
  // once stopped or failed. Children waiting to be restarted are included.
  std::vector<std::string> children() const;
  // The child named `name`, or nullptr. O(children).
  std::shared_ptr<ChildHandle> child(std::string_view name) const;

 private:
  explicit Supervisor(std::shared_ptr<detail::SupervisorCore> core);

  const std::shared_ptr<detail::SupervisorCore> core_;
  detail::AnnotatedMutex join_mu_;  // serializes joining the event thread
  std::thread thread_ FLOWREG_GUARDED_BY(join_mu_);
};

}  // namespace flowreg
