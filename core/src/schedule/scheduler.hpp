#pragma once
// Firing schedules (flowreg.schedules, docs/schedules.md) from a worker: a thread that, in one
// transaction per batch, reads the due schedules of the flows its worker serves, locking them (FOR
// UPDATE SKIP LOCKED: workers reading at once take different ones), and fires them
// (RunStore::fire_due_schedules, flowreg.fire_schedules): each tick's run is started with an
// idempotency key in the transaction that advances its schedule, one run per tick however many
// workers fire.
//
// The ticks are computed here (plan_firing: the cron expression in its time zone, with the
// catch-up and overlap policies); the database never evaluates cron.
//
// Thread-safety: plan_firing is a pure function. A Scheduler's member functions may be called from
// any thread; its own thread is joined by stop() (the destructor).

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/schedule.hpp"
#include "schedule/checks.hpp"

namespace flowreg::schedule {

using TimePoint = std::chrono::system_clock::time_point;
using Millis = std::chrono::milliseconds;

// A tick whose time passed more than this long ago is missed: with `catch_up: none` it does not
// fire. Ticks this recent fire with any policy (a worker that was busy for a moment).
inline constexpr std::chrono::seconds kOnTimeGrace{60};

// What one firing of a due schedule starts.
struct FiringPlan {
  std::vector<TimePoint> ticks;   // the ticks to fire now, oldest first
  std::optional<TimePoint> next;  // the schedule's next tick after these (may be due already)
  int missed = 0;                 // due ticks dropped by the catch-up policy (counted up to 10,000)
};

// The plan for a schedule due at `next_fire_at` (<= now): its due ticks (next_fire_at and those
// after it up to now), reduced by the catch-up policy (none: the latest if on time, latest: the
// latest, all: the latest catch_up_max), then by the overlap policy (anything but allow: one at a
// time, the oldest). Errc::invalid_argument when its cron or time zone does not parse.
Result<FiringPlan> plan_firing(const ScheduleDef& def, TimePoint next_fire_at, TimePoint now);

// The first tick of `def` strictly after `after`; Errc::invalid_argument as plan_firing, or when it
// has none (Cron::next_after searches Cron::kSearchYears ahead).
Result<TimePoint> next_tick(const ScheduleDef& def, TimePoint after);

// The input of the run of `tick`: def.input with def.time_key set to the tick (RFC 3339, UTC,
// "2026-11-27T15:00:00Z") unless time_key is empty.
nlohmann::json tick_input(const ScheduleDef& def, TimePoint tick);

// RFC 3339 in UTC, seconds precision: "2026-11-27T15:00:00Z".
std::string rfc3339(TimePoint t);

// A flow a worker serves: its slug, the version it runs and its definition.
struct ServedFlow {
  std::string version;
  FlowDef def;
  // Why the flow's input schema refuses an input, or nullopt; empty: no schema. Called on the
  // scheduler's thread only.
  std::function<std::optional<std::string>(const nlohmann::json&)> input_problem;
};

struct SchedulerOptions {
  std::string conninfo;
  std::string worker_id;        // in its log lines
  Millis poll_interval{1'000};  // the longest sleep between two reads of the due schedules
  int batch = 100;              // due schedules read per round
};

class Scheduler {
 public:
  using ServedFlows = std::function<std::vector<ServedFlow>()>;

  Scheduler(SchedulerOptions options, ServedFlows served);
  ~Scheduler();  // stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Reads the due schedules now (a flow started being served).
  void wake();
  void stop();

 private:
  void run();
  // One round: reads due schedules and fires them; returns when to read again.
  std::chrono::steady_clock::time_point round();

  SchedulerOptions options_;
  ServedFlows served_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool woken_ = false;
  struct Store;
  std::unique_ptr<Store> store_;  // the scheduler thread's alone
  std::thread thread_;
};

}  // namespace flowreg::schedule
