// RunStore: schedules (flowreg.schedules, migration 0021; fired by flowreg.fire_schedules).

#include <fmt/format.h>

#include <limits>

#include "store/run_store_detail.hpp"
#include "util/json_text.hpp"

namespace flowreg::detail {

namespace {

std::int64_t micros(TimePoint t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

std::optional<TimePoint> nullable_time(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return from_micros(f.as<std::int64_t>());
}

std::optional<std::string> nullable_text(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return row_text(f);
}

ScheduleDef schedule_def_of(const pqxx::row& r) {
  ScheduleDef d;
  d.name = row_text(r["name"]);
  d.flow = row_text(r["flow_slug"]);
  d.cron = row_text(r["cron"]);
  d.timezone = row_text(r["timezone"]);
  d.input = Json::parse(r["input"].c_str());
  d.time_key = row_text(r["time_key"]);
  d.catch_up = row_text(r["catch_up"]);
  d.catch_up_max = r["catch_up_max"].as<int>();
  d.overlap = row_text(r["overlap"]);
  return d;
}

ScheduleRecord schedule_record_of(const pqxx::row& r) {
  ScheduleRecord s;
  s.def = schedule_def_of(r);
  s.source = row_text(r["source"]);
  s.paused = r["paused"].as<bool>();
  s.def.paused = s.paused;
  s.next_fire_at = nullable_time(r["next_fire_at_us"]);
  s.last_tick_at = nullable_time(r["last_tick_at_us"]);
  s.last_fired_at = nullable_time(r["last_fired_at_us"]);
  s.last_run_id = nullable_text(r["last_run_id"]);
  s.last_run_status = nullable_text(r["last_run_status"]);
  s.last_outcome = nullable_text(r["last_outcome"]);
  s.fired = r["fired"].as<std::int64_t>();
  s.skipped = r["skipped"].as<std::int64_t>();
  s.created_at = from_micros(r["created_at_us"].as<std::int64_t>());
  s.updated_at = from_micros(r["updated_at_us"].as<std::int64_t>());
  s.flow_stored = r["flow_stored"].as<bool>();
  return s;
}

}  // namespace

Result<bool> RunStore::upsert_schedule(const ScheduleDef& def, std::string_view source,
                                       TimePoint next_fire_at, bool set_paused) {
  return guarded(fmt::format("storing schedule {}", shown_name(def.name)), [&]() -> Result<bool> {
    const auto rows =
        impl_->exec(Query::schedule_upsert, def.name, def.flow, def.cron, def.timezone,
                    json_text(def.input), def.time_key, def.catch_up, def.catch_up_max, def.overlap,
                    std::string(source), micros(next_fire_at), def.paused, set_paused);
    return !rows.empty() && rows[0]["created"].as<bool>();
  });
}

Result<std::vector<std::string>> RunStore::retire_schedules(std::string_view source,
                                                            std::span<const std::string> keep) {
  return guarded("removing schedules", [&]() -> Result<std::vector<std::string>> {
    std::vector<std::string> out;
    Json names = Json::array();
    for (const auto& n : keep) names.push_back(n);
    for (const auto& r :
         impl_->exec(Query::schedules_retire, std::string(source), json_text(names)))
      out.push_back(row_text(r["name"]));
    return out;
  });
}

Result<std::vector<ScheduleRecord>> RunStore::list_schedules(std::string_view name) {
  return guarded("listing schedules", [&]() -> Result<std::vector<ScheduleRecord>> {
    std::vector<ScheduleRecord> out;
    for (const auto& r : impl_->exec(Query::schedule_list, std::string(name), std::string(),
                                     std::numeric_limits<int>::max(), std::string()))
      out.push_back(schedule_record_of(r));
    return out;
  });
}

Result<std::vector<ScheduleRecord>> RunStore::list_schedules_page(std::string_view flow, int limit,
                                                                  std::string_view after) {
  return guarded("listing schedules", [&]() -> Result<std::vector<ScheduleRecord>> {
    std::vector<ScheduleRecord> out;
    for (const auto& r : impl_->exec(Query::schedule_list, std::string(), std::string(flow), limit,
                                     std::string(after)))
      out.push_back(schedule_record_of(r));
    return out;
  });
}

Result<ScheduleGauges> RunStore::schedule_gauges(int limit) {
  return guarded("reading the schedules' gauges", [&]() -> Result<ScheduleGauges> {
    ScheduleGauges out;
    for (const auto& r : impl_->exec(Query::schedule_metrics, limit)) {
      if (r["name"].is_null()) {  // the counts
        out.paused = r["paused"].as<std::int64_t>();
        out.due = r["due"].as<std::int64_t>();
        out.scheduled = r["scheduled"].as<std::int64_t>();
        continue;
      }
      ScheduleGauges::Next n;
      n.name = row_text(r["name"]);
      n.next_fire_at = from_micros(r["next_fire_at_us"].as<std::int64_t>());
      if (!r["last_lag_seconds"].is_null()) n.last_lag_seconds = r["last_lag_seconds"].as<double>();
      out.earliest.push_back(std::move(n));
    }
    return out;
  });
}

Result<bool> RunStore::delete_schedule(std::string_view name) {
  return guarded(fmt::format("deleting schedule {}", shown_name(name)), [&]() -> Result<bool> {
    return !impl_->exec(Query::schedule_delete, std::string(name)).empty();
  });
}

Result<bool> RunStore::pause_schedule(std::string_view name, bool paused, TimePoint next_fire_at) {
  return guarded(
      fmt::format("{} schedule {}", paused ? "pausing" : "resuming", shown_name(name)),
      [&]() -> Result<bool> {
        return !impl_->exec(Query::schedule_pause, std::string(name), paused, micros(next_fire_at))
                    .empty();
      });
}

Result<bool> RunStore::record_schedule_trigger(std::string_view name, const RunId& run) {
  return guarded(fmt::format("recording a run of schedule {}", shown_name(name)),
                 [&]() -> Result<bool> {
                   return !impl_->exec(Query::schedule_trigger, std::string(name), run).empty();
                 });
}

namespace {

DueSchedules due_of(const pqxx::result& rows) {
  DueSchedules out;
  for (const auto& r : rows) {
    if (r["name"].is_null()) {  // the first row: now, and the earliest tick not due yet
      out.now = from_micros(r["now_us"].as<std::int64_t>());
      out.next = nullable_time(r["next_us"]);
      continue;
    }
    out.due.push_back({schedule_def_of(r), from_micros(r["next_fire_at_us"].as<std::int64_t>())});
  }
  return out;
}

Json firings_json(std::span<const ScheduleFiring> firings) {
  Json out = Json::array();
  for (const auto& f : firings) {
    Json ticks = Json::array();
    for (const auto t : f.ticks) ticks.push_back(micros(t));
    Json inputs = Json::array();
    for (const auto& in : f.inputs) inputs.push_back(in);
    Json one = {{"name", f.name},       {"expected", micros(f.expected)},
                {"version", f.version}, {"ticks", ticks},
                {"inputs", inputs},     {"missed", f.missed},
                {"next", nullptr},      {"error", nullptr},
                {"skip", nullptr}};
    if (f.next) one["next"] = micros(*f.next);
    if (f.error) one["error"] = *f.error;
    if (f.skip) one["skip"] = *f.skip;
    out.push_back(std::move(one));
  }
  return out;
}

std::vector<ScheduleFired> fired_of(const pqxx::result& rows) {
  std::vector<ScheduleFired> out;
  for (const auto& r : rows)
    out.push_back({row_text(r["name"]), row_text(r["outcome"]), r["started"].as<int>()});
  return out;
}

}  // namespace

Result<std::vector<ScheduleFired>> RunStore::fire_due_schedules(
    std::span<const std::string> flows, int limit, DueSchedules& due,
    const std::function<std::vector<ScheduleFiring>(const DueSchedules&)>& plan) {
  return guarded("firing due schedules", [&]() -> Result<std::vector<ScheduleFired>> {
    Json slugs = Json::array();
    for (const auto& f : flows) slugs.push_back(f);
    const std::string slugs_text = json_text(slugs);
    return impl_->transact([&](pqxx::work& tx) {
      due = due_of(tx.exec_prepared(query_name(Query::schedules_due), slugs_text, limit));
      if (due.due.empty()) return std::vector<ScheduleFired>{};
      const auto firings = plan(due);
      return fired_of(
          tx.exec_prepared(query_name(Query::schedules_fire), json_text(firings_json(firings))));
    });
  });
}

Result<std::vector<ScheduleFired>> RunStore::fire_schedules(
    std::span<const ScheduleFiring> firings) {
  return guarded("firing schedules", [&]() -> Result<std::vector<ScheduleFired>> {
    return fired_of(impl_->exec(Query::schedules_fire, json_text(firings_json(firings))));
  });
}

}  // namespace flowreg::detail
