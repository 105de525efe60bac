// RunStore: retention (flowreg.retain, migration 0029) and the database's health (what holds
// VACUUM back, flowreg's tables).

#include <fmt/format.h>

#include <chrono>

#include "store/run_store_detail.hpp"

namespace flowreg::detail {

namespace {

std::optional<TimePoint> time_or_none(const pqxx::field& f) {
  const auto us = f.as<std::int64_t>();
  if (us < 0) return std::nullopt;
  return from_micros(us);
}

// An age in milliseconds for the SQL of retain (NULL: keep).
std::optional<std::int64_t> age_ms(const std::optional<Millis>& age) {
  if (!age || *age == Retention::kKeep) return std::nullopt;
  return age->count();
}

}  // namespace

Result<RetentionRound> RunStore::retain(const RetentionSettings& settings, std::string_view worker,
                                        int batch, const std::function<bool()>& stop) {
  if (batch < 1)
    return make_error(Errc::invalid_argument,
                      fmt::format("retention: the batch is {}; it is at least 1", batch));
  const auto started = std::chrono::steady_clock::now();
  RetentionRound round;
  auto locked = guarded("retention: taking the retention lock", [&]() -> Result<bool> {
    return impl_->exec(Query::retention_lock, kRetentionLockKey)[0]["locked"].as<bool>();
  });
  if (!locked) return tl::unexpected(std::move(locked.error()));
  if (!*locked) {
    round.locked_out = true;
    return round;
  }
  // One time for every batch (the server's clock): a batch given where the previous one ended
  // reads each run once (see retain.sql).
  auto body = [&]() -> Result<void> {
    auto now = guarded("retention", [&]() -> Result<std::int64_t> {
      return impl_->exec(Query::prune_cutoff, std::int64_t{0})[0]["cutoff_us"].as<std::int64_t>();
    });
    if (!now) return tl::unexpected(std::move(now.error()));
    std::string last_slug;
    std::int64_t last_created_us = -1;
    for (;;) {
      auto deleted = guarded(
          fmt::format("retention ({} run(s) deleted before this batch, and they stay so)",
                      round.runs),
          [&]() -> Result<std::int64_t> {
            const auto row = impl_->exec(
                Query::retain, *now, age_ms(settings.runs.completed), age_ms(settings.runs.failed),
                age_ms(settings.runs.cancelled), batch, last_slug, last_created_us)[0];
            last_slug = row["last_slug"].as<std::string>();
            last_created_us = row["last_created_us"].as<std::int64_t>();
            return row["deleted"].as<std::int64_t>();
          });
      if (!deleted) return tl::unexpected(std::move(deleted.error()));
      round.runs += *deleted;
      if (*deleted < batch) break;
      if (stop && stop()) return {};
    }
    // Every batch walked: each flow's floor, where the next round's walk stops (migration 0034).
    auto floors = guarded("retention: recording where each flow's runs begin", [&]() {
      impl_->exec(Query::retention_floors, *now);
      return Result<void>{};
    });
    if (!floors) return tl::unexpected(std::move(floors.error()));
    if (settings.events != Retention::kKeep) {
      auto events = prune_events(settings.events, batch);
      if (!events) return tl::unexpected(std::move(events.error()));
      round.events = *events;
    }
    auto buckets = prune_rate_buckets(batch);
    if (!buckets) return tl::unexpected(std::move(buckets.error()));
    round.buckets = *buckets;
    return {};
  };
  auto done = body();
  round.took = std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - started);
  // Recorded even when the round failed part way (its error, and what it deleted before), unless
  // the connection is gone; then the lock is released (a lost connection released it already).
  auto recorded = guarded("retention: recording the round", [&]() -> Result<void> {
    impl_->exec(Query::retention_record, round.runs, round.events,
                static_cast<std::int64_t>(round.took.count()), std::string(worker),
                done ? std::string() : done.error().message);
    impl_->exec(Query::retention_unlock, kRetentionLockKey);
    return {};
  });
  if (!done) return tl::unexpected(std::move(done.error()));
  if (!recorded) return tl::unexpected(std::move(recorded.error()));
  return round;
}

Result<RetentionState> RunStore::retention_state() {
  return guarded("reading retention's state", [&]() -> Result<RetentionState> {
    const auto row = impl_->exec(Query::retention_state, kRetentionLockKey)[0];
    RetentionState s;
    s.rounds = row["rounds"].as<std::int64_t>();
    s.runs_removed = row["runs_removed"].as<std::int64_t>();
    s.events_removed = row["events_removed"].as<std::int64_t>();
    s.last_at = time_or_none(row["last_at_us"]);
    s.last_took = Millis(std::max<std::int64_t>(0, row["last_ms"].as<std::int64_t>()));
    s.last_runs = std::max<std::int64_t>(0, row["last_runs"].as<std::int64_t>());
    s.last_worker = row_text(row["last_worker"]);
    s.last_error = row_text(row["last_error"]);
    s.oldest_run = time_or_none(row["oldest_run_us"]);
    s.running = row["running"].as<bool>();
    s.now = from_micros(row["now_us"].as<std::int64_t>());
    return s;
  });
}

Result<DbHealth> RunStore::db_health(int holders) {
  DbHealth out;
  auto read = guarded("reading the database's health", [&]() -> Result<void> {
    for (const auto& r : impl_->exec(Query::health_holders, std::max(1, holders))) {
      VacuumHolder h;
      h.kind = row_text(r["kind"]);
      h.name = row_text(r["name"]);
      h.application = row_text(r["application"]);
      h.who = row_text(r["who"]);
      h.client = row_text(r["client"]);
      h.state = row_text(r["state"]);
      h.query = row_text(r["query"]);
      h.xmin_age = r["xmin_age"].as<std::int64_t>();
      h.since = time_or_none(r["since_us"]);
      out.holders.push_back(std::move(h));
    }
    for (const auto& r : impl_->exec(Query::health_tables)) {
      TableHealth t;
      t.name = row_text(r["name"]);
      t.live = r["live"].as<std::int64_t>();
      t.dead = r["dead"].as<std::int64_t>();
      t.table_bytes = r["table_bytes"].as<std::int64_t>();
      t.index_bytes = r["index_bytes"].as<std::int64_t>();
      t.bloat_bytes = r["bloat_bytes"].as<std::int64_t>();
      t.vacuums = r["vacuums"].as<std::int64_t>();
      t.vacuumed = time_or_none(r["vacuumed_us"]);
      t.analyzed = time_or_none(r["analyzed_us"]);
      out.tables.push_back(std::move(t));
    }
    return {};
  });
  if (!read) return tl::unexpected(std::move(read.error()));
  auto retention = retention_state();
  if (!retention) return tl::unexpected(std::move(retention.error()));
  out.retention = std::move(*retention);
  return out;
}

}  // namespace flowreg::detail
