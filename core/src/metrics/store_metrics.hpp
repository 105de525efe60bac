#pragma once
// Metrics read from the run store at scrape time: runs started and ended per flow (counters) and
// tasks queued and running per flow (gauges). One query per scrape (RunStore::scrape_counts,
// index range scans), at most one every `cache` however often the process is scraped, and, since
// the query's cost grows with the backlog (it counts the queued tasks and reads the runs not
// ended: 0.5 s with 1,000,000 runs queued, bench/worker_bench --only scrape), at most one every
// `cost_factor` times the last one's duration: a process's reads take at most 1 / (1 + cost_factor)
// of the time of one server process however large the backlog grows (the values lag by as much; the
// gauge flowreg_run_store_read_seconds tells the last read's duration).
//
// With them, at most as often, a second query (RunStore::schedule_gauges) reads the schedules by
// state and the next tick and last lag of at most kScheduleSeries of them (gauges).
//
// The run counters count runs as they appear in the database this process reads, from its first
// scrape on: every process reading one database counts the same runs (aggregate them across
// processes with max, not sum). A run is counted once the server's clock is 3 s past its start or
// end (RunStore::scrape_counts), so a counter lags by that much.
//
// Thread-safety: constructed and destroyed by one thread; its hook runs on scraping threads.
// Create at most one per process (two would count every run twice).

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "flowreg/thread_annotations.hpp"
#include "metrics/metrics.hpp"
#include "store/run_store.hpp"

namespace flowreg::detail::metrics {

// A process reads the run store for metrics at most once every this many times its last read's
// duration (StoreMetrics' default).
inline constexpr double kReadCostFactor = 20;

// The schedules given a series of their own (flowreg_schedule_next_fire_timestamp_seconds,
// flowreg_schedule_last_fire_lag_seconds): the unpaused ones with the earliest next tick, the most
// overdue first.
inline constexpr int kScheduleSeries = 1000;

class StoreMetrics {
 public:
  // Registers its families and its scrape hook in `registry`, which must outlive it. Connects on
  // the first scrape (and again after a failure); a scrape that cannot read the store keeps the
  // values of the last one that could.
  explicit StoreMetrics(std::string conninfo, Registry& registry = default_registry(),
                        Millis cache = Millis(1'000), double cost_factor = kReadCostFactor);
  StoreMetrics(const StoreMetrics&) = delete;
  StoreMetrics& operator=(const StoreMetrics&) = delete;

 private:
  void refresh();

  const std::string conninfo_;
  const Millis cache_;
  const double cost_factor_;
  Family<Counter>& started_;
  Family<Counter>& completed_;
  Family<Counter>& failed_;
  Family<Counter>& cancelled_;
  Family<Gauge>& queued_;
  Family<Gauge>& running_;
  Family<Gauge>& oldest_ready_;
  Family<Gauge>& schedules_;
  Family<Gauge>& schedule_next_;
  Family<Gauge>& schedule_lag_;
  Family<Gauge>& table_rows_;
  Family<Gauge>& table_bytes_;
  Family<Gauge>& retention_removed_;
  Gauge& retention_last_;
  Gauge& oldest_run_;
  Gauge& oldest_snapshot_;
  Gauge& xmin_age_;
  Gauge& up_;
  Gauge& read_seconds_;

  AnnotatedMutex mu_;
  std::unique_ptr<RunStore> store_ FLOWREG_GUARDED_BY(mu_);
  std::optional<ScrapeWindow> window_ FLOWREG_GUARDED_BY(mu_);  // the next scrape's
  std::chrono::steady_clock::time_point next_ FLOWREG_GUARDED_BY(mu_){};
  std::set<std::string> gauge_flows_ FLOWREG_GUARDED_BY(mu_);  // flows with a gauge series

  std::shared_ptr<void> hook_;  // last: removed (and waited for) before the rest dies
};

}  // namespace flowreg::detail::metrics
