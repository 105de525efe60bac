#pragma once
// What a worker is told: its identity, its database, its sizes and its clocks.

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/options.hpp"
#include "flowreg/tools/supervisor.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail {

struct WorkerOptions {
  // Names the worker's supervisors in events and logs (NAME, its child NAME.loops, the flow
  // services NAME.loop:SLUG@VERSION; see worker.hpp); tests give each worker its own.
  std::string name = "worker";
  std::string worker_id;  // default: HOST:PID:RANDOM (unique per process start)
  std::string conninfo;   // the run store's database

  int concurrency = 4;   // handler threads
  int batch_size = 32;   // tasks claimed per round trip; a worker holds at most concurrency +
                         // lanes * batch
  Millis lease{10'000};  // a claimed task's lease (renewed every lease / 3 while its handler runs)
  Millis poll_interval{1'000};       // claim without a notification this often
  Millis heartbeat_interval{5'000};  // flowreg.workers.last_heartbeat_at
  Millis reconnect_min{50};          // backoff after losing the database: doubles up to max
  Millis reconnect_max{5'000};
  int store_connections = 2;  // run-store connections shared by the lanes' round trips
  // Threads making the round trips of all the flows served, each with one in flight (lanes.hpp);
  // however many flow versions the worker serves.
  int lanes = 2;
  std::vector<std::string> flows;  // slugs served; empty: every loaded flow
  bool schedules = true;  // fire the due schedules of the flows served (schedule/scheduler.hpp)
  // Take part in retention (worker/retainer.hpp) with these settings; unset: not this worker.
  std::optional<RetentionSettings> retention;

  // Where handlers run unless their flow says (flowreg/flow.hpp, Isolation), and the limits of
  // handler processes under the flow's own.
  Isolation isolation = Isolation::thread;
  HandlerLimits limits;
  // The flowreg binary, started as `__handler-host` for handler processes; empty: this process's
  // executable (/proc/self/exe).
  std::filesystem::path handler_exe;

  // A handler output larger than this (bytes of JSON) fails its task permanently, naming the limit.
  std::size_t max_output_bytes = std::size_t{16} << 20;
  // Where the task journal lives (task_journal.hpp); empty: no journal, no crash attribution.
  // Journals left there by dead workers are reported when this worker starts.
  std::filesystem::path journal_dir;
  // A task running in this many workers that died, none of which recorded a fatal signal for it,
  // fails permanently.
  int crash_limit = 3;
  // Called (by the keeper, at most every reconnect_max) while the database cannot be reached: the
  // embedded cluster's owner starts it again. Empty: nothing is done but retrying.
  std::function<Result<void>()> revive_database;

  // A flow service that fails is restarted alone; more than this many restarts of the flow
  // services within the period make NAME.loops give up, and it is started again with fresh ones;
  // more than tree_restarts of those within their period make the worker fail.
  RestartLimit flow_restarts{20, Millis(60'000)};
  RestartLimit tree_restarts{3, Millis(60'000)};

  std::function<void(const SupervisorEvent&)> on_event;  // every supervisor's events
  // Test hook: called by a lane before each round trip for a flow version; an error makes that
  // flow's service fail.
  std::function<Result<void>(const FlowKey&)> round_trip_probe;
};

}  // namespace flowreg::detail
