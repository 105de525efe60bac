#pragma once
// The database's health, the same for every front end (`flowreg db health`, GET /api/v1/health,
// the detail of /readyz, the dashboard's warning, the metrics; docs/operations.md): what holds
// VACUUM back (a session with an old snapshot such as a pg_dump, a prepared transaction, a
// replication slot, a standby's hot_standby_feedback), flowreg's tables (rows live and dead, bytes,
// bloat, the last vacuum), and what retention did; with warnings, each a sentence that names the
// culprit and what to do.
//
// Thread-safety: free functions; the RunStore passed in is used by one thread at a time (its own
// contract).

#include <cstdint>
#include <string>
#include <vector>

#include "app/forms.hpp"
#include "flowreg/error.hpp"
#include "store/run_store.hpp"

namespace flowreg::app {

// When a finding is a warning.
struct HealthThresholds {
  // A session's transaction (a snapshot) or a prepared transaction open longer than this.
  Millis held{60'000};
  // A slot's or a standby's xmin this many transactions old.
  std::int64_t xmin_age = 1'000'000;
  // A table with at least this many dead rows, and this share of its rows dead.
  std::int64_t dead_rows = 10'000;
  double dead_share = 0.2;
};

struct HealthReport {
  // {ok, now, warnings: [text], holders: [...], tables: [...], retention: {...}}
  // (docs/api.md#health).
  json body;
  std::vector<std::string> warnings;
};

HealthReport health_report(const detail::DbHealth& health, const HealthThresholds& limits = {});
Result<HealthReport> db_health(detail::RunStore& store, const HealthThresholds& limits = {});

// A duration to the second, as people read it: "45s", "5m12s", "3h04m", "2d03h".
std::string age_text(Millis age);

}  // namespace flowreg::app
