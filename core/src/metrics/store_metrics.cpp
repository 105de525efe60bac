#include "metrics/store_metrics.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <utility>

namespace flowreg::detail::metrics {

namespace {
constexpr const char* kAggregate =
    " (read from the run store by this process from its first scrape on; every process reading "
    "the same database counts the same runs: aggregate with max, not sum)";
}

StoreMetrics::StoreMetrics(std::string conninfo, Registry& registry, Millis cache,
                           double cost_factor)
    : conninfo_(std::move(conninfo)),
      cache_(cache),
      cost_factor_(cost_factor),
      started_(registry.counter("flowreg_runs_started_total",
                                std::string("Runs of the flow started") + kAggregate, {"flow"})),
      completed_(registry.counter("flowreg_runs_completed_total",
                                  std::string("Runs of the flow that completed") + kAggregate,
                                  {"flow"})),
      failed_(registry.counter("flowreg_runs_failed_total",
                               std::string("Runs of the flow that failed") + kAggregate, {"flow"})),
      cancelled_(registry.counter("flowreg_runs_cancelled_total",
                                  std::string("Runs of the flow that were cancelled") + kAggregate,
                                  {"flow"})),
      queued_(registry.gauge("flowreg_tasks_queued",
                             "Tasks of the flow waiting to be claimed (ready or waiting for a "
                             "retry), in the run store, as of the last scrape.",
                             {"flow"})),
      running_(registry.gauge(
          "flowreg_tasks_running",
          "Tasks of the flow claimed by some worker and not ended, in the run store, as of the "
          "last scrape.",
          {"flow"})),
      oldest_ready_(registry.gauge(
          "flowreg_tasks_oldest_ready_seconds",
          "How long the flow's oldest queued task that is ready (not waiting for a retry's delay) "
          "has waited to be claimed, as of the last scrape; 0 when none waits. Grows when no "
          "worker serves the flow, or its workers are saturated.",
          {"flow"})),
      schedules_(registry.gauge(
          "flowreg_schedules",
          "Schedules in the run store by state, as of the last scrape: scheduled (next tick to "
          "come), due (next tick passed, not fired yet: a worker serving its flow fires it) and "
          "paused.",
          {"state"})),
      schedule_next_(registry.gauge(
          "flowreg_schedule_next_fire_timestamp_seconds",
          fmt::format("The next tick of the schedule (seconds since the epoch), as of the last "
                      "scrape: in the past while it is due. For the {} unpaused schedules with "
                      "the earliest next tick only (the most overdue first); a paused or deleted "
                      "schedule has none.",
                      kScheduleSeries),
          {"schedule"})),
      schedule_lag_(registry.gauge(
          "flowreg_schedule_last_fire_lag_seconds",
          "Time from the schedule's last tick that started a run to the commit of that run, as "
          "of the last scrape; for the schedules of flowreg_schedule_next_fire_timestamp_seconds "
          "whose last firing started a run.",
          {"schedule"})),
      table_rows_(registry.gauge(
          "flowreg_table_rows",
          "Rows of each of flowreg's tables by kind, live or dead (the statistics collector's "
          "estimates), as of the last scrape. Dead rows that grow and stay: something holds "
          "VACUUM back (flowreg db health).",
          {"table", "kind"})),
      table_bytes_(registry.gauge(
          "flowreg_table_bytes",
          "Bytes of each of flowreg's tables by part: table (with its TOAST), indexes, and bloat "
          "(an estimate of the table's bytes beyond what its live rows need), as of the last "
          "scrape.",
          {"table", "part"})),
      retention_removed_(registry.gauge(
          "flowreg_retention_removed",
          "What retention removed since the database was created, by kind (runs, events), as "
          "the workers recorded it (flowreg.retention): a total that only grows.",
          {"kind"})),
      retention_last_(registry
                          .gauge("flowreg_retention_last_round_timestamp_seconds",
                                 "When retention's last round ended (seconds since the epoch); "
                                 "0 before the first.",
                                 {})
                          .with({})),
      oldest_run_(registry
                      .gauge("flowreg_runs_oldest_age_seconds",
                             "Age of the oldest run kept (since its creation), as of the last "
                             "scrape; 0 when there is none.",
                             {})
                      .with({})),
      oldest_snapshot_(registry
                           .gauge("flowreg_db_oldest_transaction_seconds",
                                  "How long the oldest transaction or snapshot of this database "
                                  "(a session's, or a prepared transaction) has been open, as of "
                                  "the last scrape; 0 when none. A long one (a pg_dump) keeps "
                                  "VACUUM from removing dead rows: see flowreg db health.",
                                  {})
                           .with({})),
      xmin_age_(registry
                    .gauge("flowreg_db_xmin_age_transactions",
                           "Transactions since the oldest xmin held by a session, a prepared "
                           "transaction, a replication slot or a standby's "
                           "hot_standby_feedback, as of the last scrape; 0 when none.",
                           {})
                    .with({})),
      up_(registry
              .gauge("flowreg_run_store_up",
                     "1 when this process's last read of the run store for metrics succeeded "
                     "(the runs_* and tasks_* metrics are current), else 0.",
                     {})
              .with({})),
      read_seconds_(registry
                        .gauge("flowreg_run_store_read_seconds",
                               fmt::format("Seconds this process's last read of the run store "
                                           "for metrics took. Its cost grows with the backlog: "
                                           "the reads are at most one every {} ms, and at most "
                                           "one every {:g} times this.",
                                           cache.count(), cost_factor),
                               {})
                        .with({})) {
  hook_ = registry.on_scrape([this] { refresh(); });
}

void StoreMetrics::refresh() {
  MutexLock lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (now < next_) return;
  next_ = now + cache_;
  if (!store_) {
    auto connected = RunStore::connect(conninfo_);
    if (!connected) {
      spdlog::debug("metrics: reading the run store: {}", connected.error().format());
      up_.set(0);
      return;
    }
    store_ = std::make_unique<RunStore>(std::move(*connected));
  }
  auto counts = store_->scrape_counts(window_);
  std::optional<Result<ScheduleGauges>> schedules;
  if (counts) schedules = store_->schedule_gauges(kScheduleSeries);
  // Read within the measured time, so that its cost spaces the reads too.
  std::optional<Result<DbHealth>> health;
  if (counts) health = store_->db_health(100);
  const auto took = std::chrono::steady_clock::now() - now;
  read_seconds_.set(std::chrono::duration<double>(took).count());
  next_ = std::max(next_, std::chrono::steady_clock::now() +
                              std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                  took * cost_factor_));
  if (!counts) {
    spdlog::debug("metrics: reading the run store: {}", counts.error().format());
    up_.set(0);
    if (store_->connection_lost()) {
      store_.reset();
      database_reconnects().inc();
    }
    return;
  }
  if (window_) {
    for (const auto& c : counts->runs) {
      Family<Counter>* family = c.status == RunStatus::started     ? &started_
                                : c.status == RunStatus::completed ? &completed_
                                : c.status == RunStatus::failed    ? &failed_
                                                                   : &cancelled_;
      family->with({c.flow_slug}).inc(static_cast<std::uint64_t>(c.count));
    }
  }
  window_ = counts->next;
  if (schedules && *schedules) {
    const ScheduleGauges& g = **schedules;
    schedules_.with({"scheduled"}).set(static_cast<double>(g.scheduled));
    schedules_.with({"due"}).set(static_cast<double>(g.due));
    schedules_.with({"paused"}).set(static_cast<double>(g.paused));
    std::vector<std::string> named, lagged;
    for (const auto& n : g.earliest) {
      named.push_back(n.name);
      schedule_next_.with({n.name}).set(
          std::chrono::duration<double>(n.next_fire_at.time_since_epoch()).count());
      if (n.last_lag_seconds) {
        lagged.push_back(n.name);
        schedule_lag_.with({n.name}).set(*n.last_lag_seconds);
      }
    }
    schedule_next_.retain(named);
    schedule_lag_.retain(lagged);
  } else if (schedules) {
    spdlog::debug("metrics: reading the schedules: {}", (*schedules).error().format());
  }
  // The database's health: flowreg's tables, what holds VACUUM back, retention.
  if (health && *health) {
    const DbHealth& h = **health;
    for (const auto& t : h.tables) {
      table_rows_.with({t.name, "live"}).set(static_cast<double>(t.live));
      table_rows_.with({t.name, "dead"}).set(static_cast<double>(t.dead));
      table_bytes_.with({t.name, "table"}).set(static_cast<double>(t.table_bytes));
      table_bytes_.with({t.name, "indexes"}).set(static_cast<double>(t.index_bytes));
      table_bytes_.with({t.name, "bloat"}).set(static_cast<double>(t.bloat_bytes));
    }
    const auto& r = h.retention;
    retention_removed_.with({"runs"}).set(static_cast<double>(r.runs_removed));
    retention_removed_.with({"events"}).set(static_cast<double>(r.events_removed));
    retention_last_.set(
        r.last_at ? std::chrono::duration<double>(r.last_at->time_since_epoch()).count() : 0.0);
    oldest_run_.set(
        r.oldest_run ? std::max(0.0, std::chrono::duration<double>(r.now - *r.oldest_run).count())
                     : 0.0);
    double held = 0, xmin = 0;
    for (const auto& holder : h.holders) {
      xmin = std::max(xmin, static_cast<double>(holder.xmin_age));
      if (holder.since && (holder.kind == "session" || holder.kind == "prepared"))
        held = std::max(held, std::chrono::duration<double>(r.now - *holder.since).count());
    }
    oldest_snapshot_.set(held);
    xmin_age_.set(xmin);
  } else if (health) {
    spdlog::debug("metrics: reading the database's health: {}", health->error().format());
  }
  up_.set(1);
  // Flows that had tasks before and have none now read 0, not their last value.
  for (const auto& flow : gauge_flows_) {
    queued_.with({flow}).set(0);
    running_.with({flow}).set(0);
    oldest_ready_.with({flow}).set(0);
  }
  const auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  for (const auto& t : counts->tasks) {
    gauge_flows_.insert(t.flow_slug);
    queued_.with({t.flow_slug}).set(static_cast<double>(t.queued));
    running_.with({t.flow_slug}).set(static_cast<double>(t.running));
    if (t.oldest_ready_us > 0)
      oldest_ready_.with({t.flow_slug})
          .set(static_cast<double>(std::max<std::int64_t>(0, now_us - t.oldest_ready_us)) / 1e6);
  }
}

}  // namespace flowreg::detail::metrics
