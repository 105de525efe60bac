#pragma once
// Schedules, the same from every front end (docs/schedules.md): a definition checked before it is
// stored, the schedules of a configuration file stored when a worker or `flowreg serve` starts with
// it, pausing, resuming, triggering by hand, and a schedule's JSON form and status.
//
// Thread-safety: free functions; the RunStore passed in is used by one thread at a time (its own
// contract).

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "app/forms.hpp"
#include "flowreg/config.hpp"
#include "flowreg/error.hpp"
#include "flowreg/flow_registry.hpp"
#include "flowreg/schedule.hpp"
#include "store/run_store.hpp"

namespace flowreg::app {

// Errc::invalid_argument naming every problem of `def` (schedule/scheduler.hpp's checks), one
// detail each, or nothing.
Result<void> check_schedule(const ScheduleDef& def);

// Checks and stores `def` as a schedule created at run time (source "api"): created, or its
// definition replaced (a schedule declared in a file is replaced too, and becomes "api"). Its next
// tick is computed from now when it is new or its cron or time zone changed. Whether it was
// created.
Result<bool> save_schedule(detail::RunStore& store, const ScheduleDef& def);

// Stores the schedules of a configuration file (source "config:<module>") and removes those of the
// same source that it no longer declares. A schedule paused or resumed by hand keeps that state.
struct SyncedSchedules {
  int stored = 0;                    // created or changed
  std::vector<std::string> removed;  // names
};
Result<SyncedSchedules> sync_schedules(detail::RunStore& store, const Config& config);

// Pauses, or resumes (its next tick: the first after now; the ticks passed while it was paused do
// not fire). Errc::not_found when there is no such schedule.
Result<void> pause_schedule(detail::RunStore& store, std::string_view name, bool paused);

// Starts a run of the schedule now, outside its cron (its input, the time key set to now), of the
// flow's version registered in `registry`, and records it as the schedule's last run.
// Errc::not_found when there is no such schedule or the flow is not registered here.
Result<detail::RunInfo> trigger_schedule(detail::RunStore& store, const FlowRegistry& registry,
                                         std::string_view name);

// What a schedule is doing now, in words: "paused", "scheduled", "due (late by 3 s)", "waiting:
// flow 'x' is not loaded by any worker" (its flow has no stored version), or its last outcome
// when that is an error or a wait.
std::string schedule_status(const detail::ScheduleRecord& s, detail::TimePoint now);

// The most schedules one list gives (`schedules list --limit`, GET /api/v1/schedules?limit=), and
// its default: the next page is asked for with the last name given (--after, ?after=).
inline constexpr int kMaxSchedulesListed = 1000;

// A schedule as the API and `schedules list|show --json` give it.
json schedule_json(const detail::ScheduleRecord& s, detail::TimePoint now);

// A ScheduleDef from the API's or the CLI's JSON form: {"name", "flow", "cron", "timezone",
// "input", "time_key", "catch_up", "catch_up_max", "overlap", "paused"}; unknown keys and wrong
// types are Errc::invalid_argument naming the key.
Result<ScheduleDef> schedule_from_json(const nlohmann::json& body);

}  // namespace flowreg::app
