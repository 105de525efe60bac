#include "app/health.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace flowreg::app {

namespace {

using detail::TimePoint;

json time_or_null(const std::optional<TimePoint>& t) {
  return t ? json(iso_time(*t)) : json(nullptr);
}

Millis since(TimePoint now, TimePoint then) {
  return std::max(Millis{0}, std::chrono::duration_cast<Millis>(now - then));
}

// "pid 4242 (pg_dump, user backup, from 10.0.0.7)"
std::string holder_name(const detail::VacuumHolder& h) {
  std::vector<std::string> about;
  if (!h.application.empty()) about.push_back(h.application);
  if (!h.who.empty()) about.push_back("user " + h.who);
  if (!h.client.empty()) about.push_back("from " + h.client);
  std::string name;
  if (h.kind == "session")
    name = "session pid " + h.name;
  else if (h.kind == "standby")
    name = "standby pid " + h.name;
  else if (h.kind == "slot")
    name = fmt::format("replication slot '{}'", h.name);
  else
    name = fmt::format("prepared transaction '{}'", h.name);
  if (about.empty()) return name;
  std::string joined;
  for (const auto& a : about) joined += (joined.empty() ? "" : ", ") + a;
  return fmt::format("{} ({})", name, joined);
}

std::string excerpt(std::string_view query) {
  std::string out;
  for (const char c : query) out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  if (out.size() > 120) {
    std::size_t cut = 117;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
    out = out.substr(0, cut) + "...";
  }
  return out;
}

}  // namespace

std::string age_text(Millis age) {
  const auto s = std::max<std::int64_t>(0, age.count() / 1000);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
  return fmt::format("{}d{:02}h", s / 86400, s % 86400 / 3600);
}

HealthReport health_report(const detail::DbHealth& health, const HealthThresholds& limits) {
  HealthReport out;
  const TimePoint now = health.retention.now;
  json holders = json::array();
  for (const auto& h : health.holders) {
    const bool known = h.since.has_value();
    const Millis held = known ? since(now, *h.since) : Millis{0};
    holders.push_back(
        {{"kind", h.kind},
         {"name", h.name},
         {"application", h.application},
         {"user", h.who},
         {"client", h.client},
         {"state", h.state},
         {"xmin_age", h.xmin_age},
         {"since", time_or_null(h.since)},
         {"held_s", known ? json(static_cast<double>(held.count()) / 1000.0) : json(nullptr)},
         {"query", h.query}});
    const bool old = known && held >= limits.held && (h.kind == "session" || h.kind == "prepared");
    const bool far = (h.kind == "slot" || h.kind == "standby") && h.xmin_age >= limits.xmin_age;
    if (!old && !far) continue;
    std::string text =
        old ? fmt::format("{} has held {} for {} (xmin {} transactions old)", holder_name(h),
                          h.kind == "prepared" ? "a prepared transaction" : "a snapshot",
                          age_text(held), h.xmin_age)
            : fmt::format("{} holds VACUUM's horizon {} transactions back{}", holder_name(h),
                          h.xmin_age, h.kind == "standby" ? " (hot_standby_feedback)" : "");
    text += ": VACUUM cannot remove the rows deleted since, and the queue's claims walk past them";
    if (!h.query.empty() && h.kind == "session")
      text += fmt::format("; its query: {}", excerpt(h.query));
    text += " (docs/operations.md#who-holds-vacuum-back)";
    out.warnings.push_back(std::move(text));
  }
  json tables = json::array();
  for (const auto& t : health.tables) {
    const double rows = static_cast<double>(t.live + t.dead);
    const double share = rows > 0 ? static_cast<double>(t.dead) / rows : 0.0;
    tables.push_back({{"name", t.name},
                      {"live_rows", t.live},
                      {"dead_rows", t.dead},
                      {"dead_share", std::round(share * 1000) / 1000},
                      {"table_bytes", t.table_bytes},
                      {"index_bytes", t.index_bytes},
                      {"bloat_bytes", t.bloat_bytes},
                      {"vacuums", t.vacuums},
                      {"vacuumed_at", time_or_null(t.vacuumed)},
                      {"analyzed_at", time_or_null(t.analyzed)}});
    if (t.dead >= limits.dead_rows && share >= limits.dead_share)
      out.warnings.push_back(fmt::format(
          "table {} has {} dead rows ({:.0f}% of its rows), last vacuumed {}: a long transaction "
          "or slot above keeps them, or autovacuum cannot keep up "
          "(docs/operations.md#dead-rows-and-bloat)",
          t.name, t.dead, share * 100,
          t.vacuumed ? age_text(since(now, *t.vacuumed)) + " ago" : std::string("never")));
  }
  const auto& r = health.retention;
  json last = nullptr;
  if (r.last_at)
    last = {{"at", iso_time(*r.last_at)},
            {"took_ms", r.last_took.count()},
            {"runs", r.last_runs},
            {"worker", r.last_worker},
            {"error", r.last_error.empty() ? json(nullptr) : json(r.last_error)}};
  if (!r.last_error.empty())
    out.warnings.push_back(
        fmt::format("retention's last round (worker {}) failed: {} "
                    "(docs/operations.md#retention)",
                    r.last_worker, r.last_error));
  json retention = {
      {"rounds", r.rounds},
      {"runs_removed", r.runs_removed},
      {"events_removed", r.events_removed},
      {"last_round", std::move(last)},
      {"running", r.running},
      {"oldest_run", time_or_null(r.oldest_run)},
      {"oldest_run_age_s",
       r.oldest_run ? json(static_cast<double>(since(now, *r.oldest_run).count()) / 1000.0)
                    : json(nullptr)}};
  json warnings = json::array();
  for (const auto& w : out.warnings) warnings.push_back(w);
  out.body = {{"ok", out.warnings.empty()},      {"now", iso_time(now)},
              {"warnings", std::move(warnings)}, {"holders", std::move(holders)},
              {"tables", std::move(tables)},     {"retention", std::move(retention)}};
  return out;
}

Result<HealthReport> db_health(detail::RunStore& store, const HealthThresholds& limits) {
  auto health = store.db_health();
  if (!health) return tl::unexpected(std::move(health.error()));
  return health_report(*health, limits);
}

}  // namespace flowreg::app
