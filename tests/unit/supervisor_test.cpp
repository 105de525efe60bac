#include "flowreg/tools/supervisor.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <future>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "flowreg/tools/handle_registry.hpp"

using namespace flowreg;
using namespace std::chrono_literals;

namespace {

// A deadlock guard for waits on other threads, not a measurement.
constexpr auto kTimeout = 20s;

class Probe;

// A child with one thread, which runs until the service is stopped or told to end. However it
// ends, the thread reports the end through its ExitSignal, as a real service's thread does: after
// a stop() that report comes from an instance the supervisor stopped, and must be ignored.
class Worker final : public Service {
 public:
  Worker(Probe& probe, std::string name, ExitSignal exit, bool crash);
  ~Worker() override { shut(); }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Makes the thread report `reason` and end.
  void end(std::optional<Error> reason) {
    {
      std::lock_guard lock(mu_);
      ending_ = true;
      reason_ = std::move(reason);
    }
    cv_.notify_all();
  }
  void fail(const std::string& why) { end(Error{Errc::io, why, {}}); }
  void stop() noexcept override;
  int stops() const { return stops_.load(); }
  ExitSignal signal() const { return exit_; }

 private:
  void shut() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void body() {
    std::optional<Error> reason;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || ending_; });
      if (ending_) reason = reason_;
    }
    exit_(std::move(reason));
  }

  Probe& probe_;
  const std::string name_;
  const ExitSignal exit_;
  std::atomic<int> stops_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool ending_ = false;
  std::optional<Error> reason_;
  std::thread thread_;  // last: starts once the rest is initialized
};

// Starts Workers for the children it makes specs for, and records what happens to them: a log of
// "start:name" / "stop:name" in the order it happened, and every instance.
class Probe {
 public:
  ChildSpec spec(std::string name, RestartPolicy policy = RestartPolicy::permanent) {
    auto start = [this, name](ExitSignal exit) -> Result<std::shared_ptr<Service>> {
      bool refuse = false;
      bool crash = false;
      {
        std::lock_guard lock(mu_);
        ++attempts_[name];
        if (auto it = refusals_.find(name); it != refusals_.end() && it->second != 0) {
          refuse = true;
          if (it->second > 0) --it->second;
          log_.push_back("refused:" + name);
        }
        crash = crashing_.count(name) > 0;
      }
      cv_.notify_all();
      if (refuse) return make_error(Errc::io, "cannot start " + name);
      auto worker = std::make_shared<Worker>(*this, name, std::move(exit), crash);
      {
        std::lock_guard lock(mu_);
        instances_[name].push_back(worker);
        log_.push_back("start:" + name);
      }
      cv_.notify_all();
      return std::shared_ptr<Service>(worker);
    };
    return ChildSpec{std::move(name), std::move(start), policy};
  }

  // The next `times` start attempts of `name` (every one when negative) fail: the start function
  // returns Errc::io and logs "refused:name".
  void refuse(const std::string& name, int times = -1) {
    std::lock_guard lock(mu_);
    refusals_[name] = times;
  }
  // Later instances of `name` end with an error as soon as they start, from their own thread.
  void crash(const std::string& name) {
    std::lock_guard lock(mu_);
    crashing_.insert(name);
  }

  void record(std::string entry) {
    {
      std::lock_guard lock(mu_);
      log_.push_back(std::move(entry));
    }
    cv_.notify_all();
  }

  std::vector<std::string> log(std::size_t from = 0) const {
    std::lock_guard lock(mu_);
    return {log_.begin() + static_cast<std::ptrdiff_t>(std::min(from, log_.size())), log_.end()};
  }
  std::size_t log_size() const {
    std::lock_guard lock(mu_);
    return log_.size();
  }
  std::size_t starts(const std::string& name) const {
    std::lock_guard lock(mu_);
    auto it = instances_.find(name);
    return it == instances_.end() ? 0 : it->second.size();
  }
  int attempts(const std::string& name) const {
    std::lock_guard lock(mu_);
    auto it = attempts_.find(name);
    return it == attempts_.end() ? 0 : it->second;
  }
  std::shared_ptr<Worker> latest(const std::string& name) const {
    std::lock_guard lock(mu_);
    auto it = instances_.find(name);
    return it == instances_.end() || it->second.empty() ? nullptr : it->second.back();
  }
  std::vector<std::shared_ptr<Worker>> all_instances() const {
    std::lock_guard lock(mu_);
    std::vector<std::shared_ptr<Worker>> out;
    for (const auto& [name, list] : instances_) out.insert(out.end(), list.begin(), list.end());
    return out;
  }

  // True once `name` has started at least n times; false after kTimeout.
  bool wait_starts(const std::string& name, std::size_t n) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kTimeout, [&] {
      auto it = instances_.find(name);
      return it != instances_.end() && it->second.size() >= n;
    });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<std::string> log_;
  std::map<std::string, std::vector<std::shared_ptr<Worker>>> instances_;
  std::map<std::string, int> attempts_;
  std::map<std::string, int> refusals_;  // remaining refusals; negative: forever
  std::set<std::string> crashing_;
};

Worker::Worker(Probe& probe, std::string name, ExitSignal exit, bool crash)
    : probe_(probe), name_(std::move(name)), exit_(std::move(exit)) {
  if (crash) {
    ending_ = true;
    reason_ = Error{Errc::io, name_ + " crashed", {}};
  }
  thread_ = std::thread([this] { body(); });
}

void Worker::stop() noexcept {
  ++stops_;
  shut();
  probe_.record("stop:" + name_);
}

// Records a supervisor's events (on_event).
class Events {
 public:
  std::function<void(const SupervisorEvent&)> listener() {
    return [this](const SupervisorEvent& event) {
      {
        std::lock_guard lock(mu_);
        events_.push_back(event);
      }
      cv_.notify_all();
    };
  }
  int count(SupervisorEventKind kind, std::string_view child = {}) const {
    std::lock_guard lock(mu_);
    return static_cast<int>(std::count_if(events_.begin(), events_.end(), [&](const auto& e) {
      return e.kind == kind && (child.empty() || e.child == child);
    }));
  }
  std::vector<SupervisorEvent> of(SupervisorEventKind kind, std::string_view child = {}) const {
    std::lock_guard lock(mu_);
    std::vector<SupervisorEvent> out;
    for (const auto& e : events_) {
      if (e.kind == kind && (child.empty() || e.child == child)) out.push_back(e);
    }
    return out;
  }
  bool wait_count(SupervisorEventKind kind, std::string_view child, int n) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kTimeout, [&] {
      return std::count_if(events_.begin(), events_.end(), [&](const auto& e) {
               return e.kind == kind && (child.empty() || e.child == child);
             }) >= n;
    });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<SupervisorEvent> events_;
};

// The restart intensity's clock, moved by the test only.
class FakeClock {
 public:
  std::function<std::chrono::steady_clock::time_point()> fn() {
    return [this] { return std::chrono::steady_clock::time_point(std::chrono::milliseconds(ms_)); };
  }
  void advance(std::chrono::milliseconds by) { ms_ += by.count(); }

 private:
  std::atomic<std::int64_t> ms_{1'000'000};
};

SupervisorOptions options(std::string name, RestartStrategy strategy, Events& events,
                          RestartLimit limit = {}, FakeClock* clock = nullptr) {
  SupervisorOptions o;
  o.name = std::move(name);
  o.strategy = strategy;
  o.limit = limit;
  o.on_event = events.listener();
  if (clock) o.now = clock->fn();
  return o;
}

struct NoOptions {
  friend bool operator==(const NoOptions&, const NoOptions&) = default;
};

// Returns once the supervisor has handled every message sent to it before the call: terminating
// a child that does not exist goes through its mailbox, behind them, and changes nothing. Exit
// reports made before the call (by stopped instances as well) have been handled when it returns.
void sync(Supervisor& sup) {
  auto none = sup.terminate_child("no such child");
  REQUIRE_FALSE(none);
  REQUIRE(none.error().code == Errc::not_found);
}

// What wait() returned, or nullopt when it did not return within kTimeout (then the supervisor
// is stopped, so that the test fails instead of hanging).
std::optional<std::optional<Error>> wait_ended(Supervisor& sup) {
  auto waited = std::async(std::launch::async, [&sup] { return sup.wait(); });
  if (waited.wait_for(kTimeout) != std::future_status::ready) {
    sup.stop();
    return std::nullopt;
  }
  return waited.get();
}

// Waits for sup to end and requires that it ended with an error; returns that error.
Error wait_failed(Supervisor& sup) {
  const auto ended = wait_ended(sup);
  REQUIRE(ended);
  REQUIRE(ended->has_value());
  return **ended;
}

std::vector<std::string> entries(std::initializer_list<const char*> list) {
  return {list.begin(), list.end()};
}

}  // namespace

TEST_SUITE("supervisor") {
  TEST_CASE("start() starts the static children in order and reports each") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                                 {probe.spec("a"), probe.spec("b"), probe.spec("c")});
    REQUIRE(sup);
    CHECK((*sup)->running());
    CHECK((*sup)->name() == "s");
    CHECK((*sup)->children() == entries({"a", "b", "c"}));
    CHECK(probe.log() == entries({"start:a", "start:b", "start:c"}));
    CHECK(events.count(SupervisorEventKind::child_started) == 3);
    REQUIRE((*sup)->child("b"));
    CHECK((*sup)->child("b")->service() == probe.latest("b"));
    CHECK((*sup)->child("nope") == nullptr);
  }

  TEST_CASE("one_for_one restarts only the child that exited") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                                 {probe.spec("a"), probe.spec("b"), probe.spec("c")});
    REQUIRE(sup);
    const auto a1 = probe.latest("a");
    const auto b1 = probe.latest("b");
    const auto c1 = probe.latest("c");
    b1->fail("b lost its socket");
    REQUIRE(probe.wait_starts("b", 2));
    sync(**sup);
    CHECK(probe.starts("a") == 1);
    CHECK(probe.starts("b") == 2);
    CHECK(probe.starts("c") == 1);
    CHECK(a1->stops() == 0);
    CHECK(c1->stops() == 0);
    CHECK(b1->stops() == 1);  // the exited instance is still stopped, to join its thread
    CHECK((*sup)->child("b")->service() == probe.latest("b"));
    const auto exited = events.of(SupervisorEventKind::child_exited);
    REQUIRE(exited.size() == 1);
    CHECK(exited[0].child == "b");
    REQUIRE(exited[0].reason);
    CHECK(exited[0].reason->message == "b lost its socket");
    CHECK(events.count(SupervisorEventKind::child_restarted) == 1);
    CHECK(events.count(SupervisorEventKind::child_restarted, "b") == 1);
  }

  TEST_CASE("rest_for_one restarts the exited child and those after it, in order") {
    Probe probe;
    Events events;
    auto sup =
        Supervisor::start(options("s", RestartStrategy::rest_for_one, events),
                          {probe.spec("a"), probe.spec("b"), probe.spec("c"), probe.spec("d")});
    REQUIRE(sup);
    const auto mark = probe.log_size();
    probe.latest("b")->fail("b failed");
    REQUIRE(probe.wait_starts("d", 2));
    sync(**sup);
    // The exited b is joined first; then c and d stop, last started first; then all start again.
    CHECK(probe.log(mark) ==
          entries({"stop:b", "stop:d", "stop:c", "start:b", "start:c", "start:d"}));
    CHECK(probe.starts("a") == 1);
    CHECK(probe.latest("a")->stops() == 0);
    CHECK(probe.starts("b") == 2);
    CHECK(probe.starts("c") == 2);  // their reports of being stopped were ignored
    CHECK(probe.starts("d") == 2);
    CHECK((*sup)->children() == entries({"a", "b", "c", "d"}));
    CHECK(events.count(SupervisorEventKind::child_restarted) == 3);
  }

  TEST_CASE("one_for_all restarts every child when one exits") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_all, events),
                                 {probe.spec("a"), probe.spec("b"), probe.spec("c")});
    REQUIRE(sup);
    const auto mark = probe.log_size();
    probe.latest("b")->fail("b failed");
    REQUIRE(probe.wait_starts("c", 2));
    sync(**sup);
    CHECK(probe.log(mark) ==
          entries({"stop:b", "stop:c", "stop:a", "start:a", "start:b", "start:c"}));
    CHECK(probe.starts("a") == 2);
    CHECK(probe.starts("b") == 2);
    CHECK(probe.starts("c") == 2);
    CHECK(events.count(SupervisorEventKind::child_exited) == 1);
    CHECK(events.count(SupervisorEventKind::child_restarted) == 3);
  }

  TEST_CASE("a temporary child that exits is removed, not restarted") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                                 {probe.spec("t", RestartPolicy::temporary), probe.spec("p")});
    REQUIRE(sup);
    const auto handle = (*sup)->child("t");
    REQUIRE(handle);
    const auto t1 = probe.latest("t");
    t1->fail("t failed");
    REQUIRE(events.wait_count(SupervisorEventKind::child_removed, "t", 1));
    sync(**sup);
    CHECK(probe.starts("t") == 1);
    CHECK(t1->stops() == 1);
    CHECK((*sup)->children() == entries({"p"}));
    CHECK_FALSE(handle->alive());
    CHECK(handle->service() == nullptr);
    CHECK(events.count(SupervisorEventKind::child_restarted) == 0);
  }

  TEST_CASE("a temporary sibling stopped by a restart is removed, not restarted") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_all, events),
                                 {probe.spec("p"), probe.spec("t", RestartPolicy::temporary)});
    REQUIRE(sup);
    probe.latest("p")->fail("p failed");
    REQUIRE(probe.wait_starts("p", 2));
    sync(**sup);
    CHECK(probe.starts("t") == 1);
    CHECK(probe.latest("t")->stops() == 1);
    CHECK((*sup)->children() == entries({"p"}));
    CHECK(events.count(SupervisorEventKind::child_removed, "t") == 1);
  }

  TEST_CASE("a transient child is restarted after an error and removed after a normal end") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                                 {probe.spec("tr", RestartPolicy::transient)});
    REQUIRE(sup);
    probe.latest("tr")->fail("tr failed");
    REQUIRE(probe.wait_starts("tr", 2));
    sync(**sup);
    CHECK(probe.starts("tr") == 2);
    CHECK((*sup)->children() == entries({"tr"}));

    probe.latest("tr")->end(std::nullopt);
    REQUIRE(events.wait_count(SupervisorEventKind::child_removed, "tr", 1));
    sync(**sup);
    CHECK(probe.starts("tr") == 2);
    CHECK((*sup)->children().empty());
    const auto exited = events.of(SupervisorEventKind::child_exited, "tr");
    REQUIRE(exited.size() == 2);
    CHECK(exited[0].reason.has_value());
    CHECK_FALSE(exited[1].reason.has_value());
  }

  TEST_CASE("a permanent child is restarted even when it ends normally") {
    Probe probe;
    Events events;
    auto sup =
        Supervisor::start(options("s", RestartStrategy::one_for_one, events), {probe.spec("p")});
    REQUIRE(sup);
    probe.latest("p")->end(std::nullopt);
    REQUIRE(probe.wait_starts("p", 2));
    sync(**sup);
    CHECK(probe.starts("p") == 2);
    CHECK((*sup)->children() == entries({"p"}));
  }

  TEST_CASE(
      "gives up after exactly max_restarts restarts within the period and signals its "
      "parent") {
    Probe probe;
    Events events;
    FakeClock clock;  // never moves: every restart is within the period
    probe.crash("bad");
    std::promise<std::optional<Error>> parent_heard;
    auto heard = parent_heard.get_future();
    auto sup = Supervisor::start(
        options("s", RestartStrategy::one_for_one, events, {3, 5000ms}, &clock),
        {probe.spec("good"), probe.spec("bad")}, ExitSignal([&](std::optional<Error> reason) {
          parent_heard.set_value(std::move(reason));
        }));
    REQUIRE(sup);
    const Error error = wait_failed(**sup);
    CHECK(error.code == Errc::internal);
    CHECK(error.message ==
          "supervisor 's': child 'bad' ended 4 times within 5000 ms (limit 3); last: bad crashed");
    CHECK(probe.starts("bad") == 4);  // the first start and exactly 3 restarts
    CHECK(events.count(SupervisorEventKind::child_restarted, "bad") == 3);
    const auto limit = events.of(SupervisorEventKind::limit_reached);
    REQUIRE(limit.size() == 1);
    REQUIRE(limit[0].reason);
    CHECK(limit[0].reason->message == error.message);
    CHECK(events.count(SupervisorEventKind::stopped) == 0);
    REQUIRE(heard.wait_for(kTimeout) == std::future_status::ready);
    const auto reported = heard.get();
    REQUIRE(reported);
    CHECK(reported->message == error.message);
    CHECK_FALSE((*sup)->running());
    CHECK((*sup)->children().empty());
    CHECK(probe.latest("good")->stops() == 1);
    const auto log = probe.log();
    REQUIRE(log.size() >= 2);
    CHECK(log[log.size() - 2] == "stop:bad");  // the last exit, joined before giving up
    CHECK(log.back() == "stop:good");
    auto late = (*sup)->start_child(probe.spec("late"));
    REQUIRE_FALSE(late);
    CHECK(late.error().code == Errc::not_started);
  }

  TEST_CASE(
      "a nested supervisor that gives up is restarted by its rest_for_one parent, which "
      "gives up in turn past its own limit") {
    Probe probe;
    Events outer_events;
    Events inner_events;
    FakeClock clock;
    probe.crash("bad");
    auto inner = Supervisor::child_spec(
        options("inner", RestartStrategy::one_for_one, inner_events, {2, 5000ms}, &clock),
        {probe.spec("bad")});
    CHECK(inner.name == "inner");
    auto outer = Supervisor::start(
        options("outer", RestartStrategy::rest_for_one, outer_events, {1, 60000ms}, &clock),
        {probe.spec("first"), inner, probe.spec("after")});
    REQUIRE(outer);
    const Error error = wait_failed(**outer);
    CHECK(error.message ==
          "supervisor 'outer': child 'inner' ended 2 times within 60000 ms (limit 1); last: "
          "supervisor 'inner': child 'bad' ended 3 times within 5000 ms (limit 2); last: bad "
          "crashed");
    // Each inner instance: 1 start + 2 restarts of bad, then it gives up; the outer restarted it
    // once, with "after" (started after it) but not "first".
    CHECK(inner_events.count(SupervisorEventKind::limit_reached) == 2);
    CHECK(probe.starts("bad") == 6);
    CHECK(probe.starts("first") == 1);
    CHECK(probe.starts("after") == 2);
    CHECK(outer_events.count(SupervisorEventKind::child_exited, "inner") == 2);
    CHECK(outer_events.count(SupervisorEventKind::child_restarted, "inner") == 1);
    CHECK(outer_events.count(SupervisorEventKind::child_restarted, "after") == 1);
    CHECK(outer_events.count(SupervisorEventKind::child_restarted, "first") == 0);
    CHECK(outer_events.count(SupervisorEventKind::limit_reached) == 1);
    // "after" was stopped before the second inner supervisor started its bad child.
    const auto log = probe.log();
    const auto first_stop_after = std::find(log.begin(), log.end(), "stop:after");
    auto fourth_bad = log.begin();
    for (int seen = 0; fourth_bad != log.end(); ++fourth_bad) {
      if (*fourth_bad == "start:bad" && ++seen == 4) break;
    }
    REQUIRE(first_stop_after != log.end());
    REQUIRE(fourth_bad != log.end());
    CHECK(first_stop_after < fourth_bad);
    for (const auto& worker : probe.all_instances()) CHECK(worker->stops() == 1);
  }

  TEST_CASE("the restart intensity counts the restarts of every child together") {
    Probe probe;
    Events events;
    FakeClock clock;
    auto sup =
        Supervisor::start(options("s", RestartStrategy::one_for_one, events, {1, 5000ms}, &clock),
                          {probe.spec("a"), probe.spec("b")});
    REQUIRE(sup);
    probe.latest("a")->fail("a failed");
    REQUIRE(probe.wait_starts("a", 2));
    probe.latest("b")->fail("b failed");
    const Error error = wait_failed(**sup);
    CHECK(error.message ==
          "supervisor 's': 2 restarts within 5000 ms (limit 1), the last for child 'b'; last: b "
          "failed");
    CHECK(probe.starts("b") == 1);
    const auto limit = events.of(SupervisorEventKind::limit_reached);
    REQUIRE(limit.size() == 1);
    CHECK(limit[0].child == "b");
  }

  TEST_CASE("a limit of zero restarts gives up at the first exit that calls for a restart") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events, {0, 5000ms}),
                                 {probe.spec("t", RestartPolicy::temporary), probe.spec("a")});
    REQUIRE(sup);
    probe.latest("t")->fail("t failed");  // not restarted: does not count
    REQUIRE(events.wait_count(SupervisorEventKind::child_removed, "t", 1));
    probe.latest("a")->end(std::nullopt);
    const Error error = wait_failed(**sup);
    CHECK(error.message ==
          "supervisor 's': child 'a' ended 1 time within 5000 ms (limit 0); last: ended without "
          "an error");
    CHECK(probe.starts("a") == 1);
  }

  TEST_CASE("restarts spread beyond the period do not reach the limit") {
    Probe probe;
    Events events;
    FakeClock clock;
    auto sup = Supervisor::start(
        options("s", RestartStrategy::one_for_one, events, {2, 1000ms}, &clock), {probe.spec("a")});
    REQUIRE(sup);
    for (std::size_t i = 1; i <= 10; ++i) {
      probe.latest("a")->fail("a failed");
      REQUIRE(probe.wait_starts("a", i + 1));
      clock.advance(600ms);  // at most 2 restarts in any 1000 ms
    }
    sync(**sup);
    CHECK((*sup)->running());
    CHECK(probe.starts("a") == 11);
    CHECK(events.count(SupervisorEventKind::limit_reached) == 0);
    // Without the clock moving, the third restart within 1000 ms is one too many.
    probe.latest("a")->fail("a failed");
    REQUIRE(probe.wait_starts("a", 12));
    probe.latest("a")->fail("a failed again");
    const Error error = wait_failed(**sup);
    CHECK(error.message ==
          "supervisor 's': child 'a' ended 3 times within 1000 ms (limit 2); last: a failed again");
    CHECK(probe.starts("a") == 12);
  }

  TEST_CASE("a start failure during a restart counts as another exit against the limit") {
    Probe probe;
    Events events;
    FakeClock clock;
    auto sup = Supervisor::start(
        options("s", RestartStrategy::one_for_one, events, {3, 5000ms}, &clock), {probe.spec("a")});
    REQUIRE(sup);
    probe.refuse("a");
    probe.latest("a")->fail("a died");
    const Error error = wait_failed(**sup);
    CHECK(error.message ==
          "supervisor 's': child 'a' ended 4 times within 5000 ms (limit 3); last: supervisor "
          "'s': child 'a' failed to start: cannot start a");
    CHECK(probe.attempts("a") == 4);  // the first start, then 3 failed restarts
    CHECK(probe.starts("a") == 1);
    const auto failed = events.of(SupervisorEventKind::start_failed, "a");
    REQUIRE(failed.size() == 3);
    REQUIRE(failed[0].reason);
    CHECK(failed[0].reason->code == Errc::io);
  }

  TEST_CASE("a failed restart under rest_for_one is retried, and the children after it wait") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::rest_for_one, events),
                                 {probe.spec("a"), probe.spec("b"), probe.spec("c")});
    REQUIRE(sup);
    const auto mark = probe.log_size();
    probe.refuse("b", 2);
    probe.latest("b")->fail("b died");
    REQUIRE(probe.wait_starts("c", 2));
    sync(**sup);
    CHECK(probe.log(mark) ==
          entries({"stop:b", "stop:c", "refused:b", "refused:b", "start:b", "start:c"}));
    CHECK(probe.starts("a") == 1);
    CHECK(events.count(SupervisorEventKind::start_failed, "b") == 2);
    CHECK(events.count(SupervisorEventKind::child_restarted, "b") == 1);
    CHECK(events.count(SupervisorEventKind::child_restarted, "c") == 1);
    CHECK((*sup)->running());
  }

  TEST_CASE("stop() ends the retries of a child that cannot start") {
    Probe probe;
    Events events;
    FakeClock clock;  // frozen, and a limit it does not reach: the retries go on until stop()
    auto sup = Supervisor::start(
        options("s", RestartStrategy::rest_for_one, events, {1'000'000, 60000ms}, &clock),
        {probe.spec("a"), probe.spec("b"), probe.spec("c")});
    REQUIRE(sup);
    probe.refuse("b");
    probe.latest("b")->fail("b died");
    REQUIRE(events.wait_count(SupervisorEventKind::start_failed, "b", 3));
    const auto c = (*sup)->child("c");
    REQUIRE(c);
    CHECK(c->alive());  // waiting for b, not removed
    CHECK(c->service() == nullptr);
    (*sup)->stop();
    CHECK((*sup)->wait() == std::nullopt);
    CHECK_FALSE(c->alive());
    CHECK(probe.latest("a")->stops() == 1);
    CHECK(probe.starts("c") == 1);
    CHECK(events.count(SupervisorEventKind::limit_reached) == 0);
    CHECK(events.count(SupervisorEventKind::stopped) == 1);
  }

  TEST_CASE(
      "start() stops the children already started, in reverse order, when one fails to "
      "start") {
    Probe probe;
    Events events;
    probe.refuse("c");
    auto sup =
        Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                          {probe.spec("a"), probe.spec("b"), probe.spec("c"), probe.spec("d")});
    REQUIRE_FALSE(sup);
    CHECK(sup.error().code == Errc::io);
    CHECK(sup.error().message == "supervisor 's': child 'c' failed to start: cannot start c");
    CHECK(probe.log() == entries({"start:a", "start:b", "refused:c", "stop:b", "stop:a"}));
    CHECK(probe.attempts("d") == 0);
    CHECK(events.count(SupervisorEventKind::start_failed, "c") == 1);
  }

  TEST_CASE("start() rejects invalid children and limits without starting anything") {
    Probe probe;
    Events events;
    SUBCASE("two children with the same name") {
      auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                                   {probe.spec("a"), probe.spec("a")});
      REQUIRE_FALSE(sup);
      CHECK(sup.error().code == Errc::invalid_argument);
      CHECK(sup.error().message == "supervisor 's': two children are named 'a'");
    }
    SUBCASE("a child with an empty name") {
      auto sup =
          Supervisor::start(options("s", RestartStrategy::one_for_one, events), {probe.spec("")});
      REQUIRE_FALSE(sup);
      CHECK(sup.error().code == Errc::invalid_argument);
    }
    SUBCASE("a child without a start function") {
      auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                                   {probe.spec("a"), ChildSpec{"b", {}, RestartPolicy::permanent}});
      REQUIRE_FALSE(sup);
      CHECK(sup.error().code == Errc::invalid_argument);
      CHECK(sup.error().message.find("'b'") != std::string::npos);
    }
    SUBCASE("a negative restart limit") {
      auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events, {-1, 5000ms}),
                                   {probe.spec("a")});
      REQUIRE_FALSE(sup);
      CHECK(sup.error().code == Errc::invalid_argument);
    }
    SUBCASE("an empty period") {
      auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events, {3, 0ms}),
                                   {probe.spec("a")});
      REQUIRE_FALSE(sup);
      CHECK(sup.error().code == Errc::invalid_argument);
    }
    CHECK(probe.attempts("a") == 0);
    CHECK(events.count(SupervisorEventKind::child_started) == 0);
  }

  TEST_CASE("a start function that throws or returns no service fails to start") {
    Events events;
    SUBCASE("throws") {
      auto sup =
          Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                            {ChildSpec{"x", [](ExitSignal) -> Result<std::shared_ptr<Service>> {
                                         throw std::runtime_error("boom");
                                       }}});
      REQUIRE_FALSE(sup);
      CHECK(sup.error().code == Errc::internal);
      CHECK(sup.error().message ==
            "supervisor 's': child 'x' failed to start: the start function threw: boom");
    }
    SUBCASE("returns a null service") {
      auto sup = Supervisor::start(
          options("s", RestartStrategy::one_for_one, events),
          {ChildSpec{"x", [](ExitSignal) -> Result<std::shared_ptr<Service>> { return nullptr; }}});
      REQUIRE_FALSE(sup);
      CHECK(sup.error().code == Errc::internal);
      CHECK(sup.error().message.find("child 'x'") != std::string::npos);
    }
  }

  TEST_CASE("start_child adds a child after the others and terminate_child stops and removes it") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("dyn", RestartStrategy::one_for_one, events), {});
    REQUIRE(sup);
    CHECK((*sup)->children().empty());
    auto x = (*sup)->start_child(probe.spec("x"));
    REQUIRE(x);
    auto y = (*sup)->start_child(probe.spec("y", RestartPolicy::transient));
    REQUIRE(y);
    CHECK((*x)->name() == "x");
    CHECK((*x)->alive());
    CHECK((*x)->service() == probe.latest("x"));
    CHECK((*sup)->children() == entries({"x", "y"}));
    CHECK((*sup)->child("x") == *x);
    CHECK(events.count(SupervisorEventKind::child_started, "y") == 1);

    const auto mark = probe.log_size();
    REQUIRE((*sup)->terminate_child("x"));
    CHECK(probe.log(mark) == entries({"stop:x"}));
    CHECK((*sup)->children() == entries({"y"}));
    CHECK_FALSE((*x)->alive());
    CHECK((*x)->service() == nullptr);
    CHECK(events.count(SupervisorEventKind::child_removed, "x") == 1);
    CHECK(events.count(SupervisorEventKind::child_exited) == 0);

    auto again = (*sup)->terminate_child("x");
    REQUIRE_FALSE(again);
    CHECK(again.error().code == Errc::not_found);
    CHECK(again.error().message == "supervisor 'dyn': no child 'x'");

    // The name is free again; the old handle stays dead.
    auto x2 = (*sup)->start_child(probe.spec("x"));
    REQUIRE(x2);
    CHECK(*x2 != *x);
    CHECK((*sup)->children() == entries({"y", "x"}));
    CHECK_FALSE((*x)->alive());
  }

  TEST_CASE("start_child rejects a duplicate name without calling its start function") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("dyn", RestartStrategy::one_for_one, events), {});
    REQUIRE(sup);
    REQUIRE((*sup)->start_child(probe.spec("x")));
    auto dup = (*sup)->start_child(probe.spec("x"));
    REQUIRE_FALSE(dup);
    CHECK(dup.error().code == Errc::invalid_argument);
    CHECK(dup.error().message == "supervisor 'dyn': a child named 'x' exists");
    CHECK(probe.attempts("x") == 1);
    CHECK(probe.latest("x")->stops() == 0);
    CHECK((*sup)->children() == entries({"x"}));
  }

  TEST_CASE("start_child returns the start function's error and adds nothing") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("dyn", RestartStrategy::one_for_one, events), {});
    REQUIRE(sup);
    probe.refuse("z");
    auto z = (*sup)->start_child(probe.spec("z"));
    REQUIRE_FALSE(z);
    CHECK(z.error().code == Errc::io);
    CHECK(z.error().message == "supervisor 'dyn': child 'z' failed to start: cannot start z");
    CHECK((*sup)->children().empty());
    CHECK((*sup)->child("z") == nullptr);
    CHECK(events.count(SupervisorEventKind::start_failed, "z") == 1);
    CHECK(events.count(SupervisorEventKind::limit_reached) == 0);
  }

  TEST_CASE("start_child and terminate_child fail with not_started once the supervisor stopped") {
    Probe probe;
    Events events;
    auto sup =
        Supervisor::start(options("dyn", RestartStrategy::one_for_one, events), {probe.spec("a")});
    REQUIRE(sup);
    (*sup)->stop();
    auto started = (*sup)->start_child(probe.spec("x"));
    REQUIRE_FALSE(started);
    CHECK(started.error().code == Errc::not_started);
    CHECK(started.error().message.find("'dyn'") != std::string::npos);
    auto terminated = (*sup)->terminate_child("a");
    REQUIRE_FALSE(terminated);
    CHECK(terminated.error().code == Errc::not_started);
    CHECK(probe.attempts("x") == 0);
  }

  TEST_CASE("a child handle stays the same across restarts and is not alive after stop") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_all, events),
                                 {probe.spec("a"), probe.spec("b")});
    REQUIRE(sup);
    const auto handle = (*sup)->child("a");
    REQUIRE(handle);
    const auto first = handle->service();
    REQUIRE(first);
    probe.latest("b")->fail("b failed");  // restarts a too
    REQUIRE(probe.wait_starts("a", 2));
    sync(**sup);
    CHECK((*sup)->child("a") == handle);
    CHECK(handle->alive());
    CHECK(handle->service() == probe.latest("a"));
    CHECK(handle->service() != first);
    (*sup)->stop();
    CHECK_FALSE(handle->alive());
    CHECK(handle->service() == nullptr);
    CHECK((*sup)->child("a") == nullptr);
  }

  TEST_CASE("ChildHandle::stop terminates that child through its supervisor, once") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("dyn", RestartStrategy::one_for_one, events), {});
    REQUIRE(sup);
    auto x = (*sup)->start_child(probe.spec("x"));
    REQUIRE(x);
    (*x)->stop();
    CHECK_FALSE((*x)->alive());
    CHECK(probe.latest("x")->stops() == 1);
    CHECK((*sup)->children().empty());
    // Idempotent, and it never touches a later child of the same name.
    auto x2 = (*sup)->start_child(probe.spec("x"));
    REQUIRE(x2);
    (*x)->stop();
    sync(**sup);
    CHECK((*x2)->alive());
    CHECK(probe.latest("x")->stops() == 0);
    CHECK(events.count(SupervisorEventKind::child_removed, "x") == 1);
  }

  TEST_CASE("a ChildHandle works as a HandleRegistry handle") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("apps", RestartStrategy::one_for_one, events), {});
    REQUIRE(sup);
    HandleRegistry<std::string, ChildHandle, NoOptions> registry;
    REQUIRE(registry.start());
    auto start_app = [&](const std::string& key, const NoOptions&) {
      return (*sup)->start_child(probe.spec(key, RestartPolicy::transient));
    };
    auto x = registry.get_or_start("app:x", start_app);
    REQUIRE(x);
    CHECK(registry.lookup("app:x") == *x);
    REQUIRE(registry.stop("app:x"));  // calls ChildHandle::stop
    CHECK(probe.latest("app:x")->stops() == 1);
    CHECK((*sup)->children().empty());

    // A child that ends normally leaves the supervisor: the registry notices it is not alive.
    auto y = registry.get_or_start("app:y", start_app);
    REQUIRE(y);
    probe.latest("app:y")->end(std::nullopt);
    REQUIRE(events.wait_count(SupervisorEventKind::child_removed, "app:y", 1));
    CHECK(registry.lookup("app:y") == nullptr);
    auto y2 = registry.get_or_start("app:y", start_app);
    REQUIRE(y2);
    CHECK(*y2 != *y);
    CHECK(probe.starts("app:y") == 2);
  }

  TEST_CASE("stop() stops the children in reverse start order and is idempotent") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("s", RestartStrategy::one_for_one, events),
                                 {probe.spec("a"), probe.spec("b"), probe.spec("c")});
    REQUIRE(sup);
    const auto mark = probe.log_size();
    (*sup)->stop();
    CHECK(probe.log(mark) == entries({"stop:c", "stop:b", "stop:a"}));
    CHECK_FALSE((*sup)->running());
    CHECK((*sup)->children().empty());
    CHECK((*sup)->wait() == std::nullopt);
    (*sup)->stop();
    CHECK(probe.log(mark).size() == 3);
    CHECK(events.count(SupervisorEventKind::stopped) == 1);
    for (const auto& worker : probe.all_instances()) CHECK(worker->stops() == 1);
  }

  TEST_CASE("an exit report from a stale instance is ignored, and so is a second report") {
    Probe probe;
    Events events;
    auto sup =
        Supervisor::start(options("s", RestartStrategy::one_for_one, events), {probe.spec("a")});
    REQUIRE(sup);
    const auto a1 = probe.latest("a");
    const ExitSignal stale = a1->signal();
    a1->fail("a failed");
    REQUIRE(probe.wait_starts("a", 2));
    sync(**sup);
    const auto a2 = probe.latest("a");

    stale(Error{Errc::io, "from the past", {}});
    sync(**sup);  // the report was handled before this returns
    CHECK(probe.starts("a") == 2);
    CHECK(a2->stops() == 0);
    CHECK(events.count(SupervisorEventKind::child_exited) == 1);

    const ExitSignal current = a2->signal();
    current(Error{Errc::io, "first report", {}});
    current(Error{Errc::io, "second report", {}});
    REQUIRE(probe.wait_starts("a", 3));
    sync(**sup);
    CHECK(probe.starts("a") == 3);
    const auto exited = events.of(SupervisorEventKind::child_exited);
    REQUIRE(exited.size() == 2);
    REQUIRE(exited[1].reason);
    CHECK(exited[1].reason->message == "first report");
  }

  TEST_CASE("exit signals after the supervisor is gone, and default signals, do nothing") {
    Probe probe;
    Events events;
    ExitSignal kept;
    {
      auto sup =
          Supervisor::start(options("s", RestartStrategy::one_for_one, events), {probe.spec("a")});
      REQUIRE(sup);
      kept = probe.latest("a")->signal();
      (*sup)->stop();
      kept(Error{Errc::io, "after stop", {}});
    }
    kept(Error{Errc::io, "after destruction", {}});
    ExitSignal none;
    none(Error{Errc::io, "nobody listens", {}});
    int calls = 0;
    ExitSignal once([&](std::optional<Error>) { ++calls; });
    once();
    once(Error{Errc::io, "again", {}});
    CHECK(calls == 1);
    CHECK(probe.starts("a") == 1);
    CHECK(events.count(SupervisorEventKind::child_exited) == 0);
  }

  TEST_CASE("calls that would wait for the supervisor fail on its own thread instead of hanging") {
    Probe probe;
    Events events;
    auto sup = Supervisor::start(options("dyn", RestartStrategy::one_for_one, events), {});
    REQUIRE(sup);
    Supervisor* raw = sup->get();
    std::optional<Result<std::shared_ptr<ChildHandle>>> nested_start;
    std::optional<Result<void>> nested_terminate;
    auto spec = probe.spec("w");
    auto start_w = spec.start;
    spec.start = [&, start_w](ExitSignal exit) {
      nested_start = raw->start_child(probe.spec("inner"));
      nested_terminate = raw->terminate_child("w");
      return start_w(std::move(exit));
    };
    REQUIRE((*sup)->start_child(spec));  // nested_* were written on the event thread before this
    REQUIRE(nested_start);
    REQUIRE_FALSE(*nested_start);
    CHECK(nested_start->error().code == Errc::invalid_argument);
    CHECK(nested_start->error().message.find("own thread") != std::string::npos);
    REQUIRE(nested_terminate);
    REQUIRE_FALSE(*nested_terminate);
    CHECK(nested_terminate->error().code == Errc::invalid_argument);
    CHECK(probe.attempts("inner") == 0);
    CHECK((*sup)->children() == entries({"w"}));
  }

  TEST_CASE(
      "concurrent exit reports and concurrent stop() calls leave every instance stopped "
      "once") {
    for (const RestartStrategy strategy :
         {RestartStrategy::one_for_one, RestartStrategy::rest_for_one,
          RestartStrategy::one_for_all}) {
      CAPTURE(static_cast<int>(strategy));
      Probe probe;
      Events events;
      std::vector<ChildSpec> specs;
      const std::vector<std::string> names = {"c0", "c1", "c2", "c3", "c4", "c5"};
      for (const auto& name : names) specs.push_back(probe.spec(name));
      auto sup =
          Supervisor::start(options("s", strategy, events, {1'000'000, 60000ms}), std::move(specs));
      REQUIRE(sup);

      constexpr int kReporters = 4;
      constexpr int kStoppers = 2;
      std::latch reported_enough(kReporters);
      std::atomic<bool> stopped{false};
      std::atomic<int> reports{0};
      {
        std::vector<std::thread> threads;
        for (int r = 0; r < kReporters; ++r) {
          threads.emplace_back([&, r] {
            bool counted = false;
            for (int i = 0; !stopped.load() || i < 50; ++i) {
              const auto& name = names[static_cast<std::size_t>(r + i) % names.size()];
              if (auto worker = probe.latest(name)) {
                worker->signal()(Error{Errc::io, name + " failed", {}});
                ++reports;
              }
              (void)(*sup)->children();
              if (auto handle = (*sup)->child(name)) (void)handle->service();
              if (i == 50 && !counted) {
                counted = true;
                reported_enough.count_down();
              }
              if (i > 5000) break;  // in case stop() never returns: the test then fails below
            }
            if (!counted) reported_enough.count_down();
          });
        }
        for (int s = 0; s < kStoppers; ++s) {
          threads.emplace_back([&] {
            reported_enough.wait();
            (*sup)->stop();
            stopped = true;
          });
        }
        for (auto& t : threads) t.join();
      }
      CHECK(stopped.load());
      CHECK(reports.load() > 0);
      CHECK((*sup)->wait() == std::nullopt);
      CHECK_FALSE((*sup)->running());
      CHECK(events.count(SupervisorEventKind::stopped) == 1);
      CHECK(events.count(SupervisorEventKind::limit_reached) == 0);
      for (const auto& name : names) {
        // Handles are gone with the children; every instance ever started was stopped once.
        CHECK((*sup)->child(name) == nullptr);
      }
      const auto workers = probe.all_instances();
      CHECK(workers.size() >= names.size());
      for (const auto& worker : workers) CHECK(worker->stops() == 1);
    }
  }
}
