#pragma once
// `flowreg worker` and `flowreg workers`.

#include <string>
#include <vector>

#include "flowreg/config.hpp"
#include "worker/worker.hpp"

namespace flowreg::cli {

struct WorkerArgs {
  std::vector<std::string> flows;                    // overrides worker.flows
  int concurrency = 0;                               // 0: worker.concurrency
  int batch_size = 0;                                // 0: worker.batch_size
  std::string lease, poll_interval, shutdown_grace;  // durations; "": the configuration's
  std::string id;                                    // "": HOST:PID:RANDOM
  std::string max_output;          // a size ("16MiB", "500KB", "1048576"); "": the configuration's
  std::string heartbeat_interval;  // a duration; "": 5s
};

// Runs a worker until SIGTERM or SIGINT (graceful: in-flight handlers get shutdown_grace, a second
// signal cuts it short) or until its supervision tree gives up. Exit code 0 after a signal, 1 on
// failure. Does not return normally when handlers were left running: exits the process.
int worker_command(const Config& config, const std::string& conninfo,
                   detail::FlowSourceFactory source, const WorkerArgs& args);

// Prints the workers recorded in the database (flowreg.workers).
int workers_command(detail::RunStore& store, bool as_json);

}  // namespace flowreg::cli
