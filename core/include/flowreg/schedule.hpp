#pragma once
// A schedule: runs of a flow started at the ticks of a cron expression in a time zone.
// Declared in a configuration file (`schedules:`) or created at run time (`flowreg schedules
// create`, the API); stored in flowreg.schedules and fired by the workers serving its flow
// (docs/schedules.md).

#include <nlohmann/json.hpp>
#include <string>

namespace flowreg {

struct ScheduleDef {
  std::string name;  // ^[a-z][a-z0-9_.-]{0,127}$, unique
  std::string flow;  // the slug of the flow it starts
  std::string cron;  // 5 fields, 6 with seconds first, or @hourly-style (schedule/cron.hpp)
  std::string timezone = "UTC";                     // an IANA name
  nlohmann::json input = nlohmann::json::object();  // each run's input (an object)
  std::string time_key = "scheduled_at";  // the input key given the tick's time; "" for none
  std::string catch_up = "latest";        // none | latest | all: ticks missed while nothing ran
  int catch_up_max = 100;                 // with all: at most this many missed ticks fire
  std::string overlap = "allow";          // allow | skip | queue: while its last run runs
  bool paused = false;                    // when it is created
};

}  // namespace flowreg
