#include "app/schedules.hpp"

#include <fmt/format.h>

#include <chrono>
#include <set>

#include "app/forms.hpp"
#include "app/runs.hpp"
#include "schedule/scheduler.hpp"

namespace flowreg::app {

namespace {

Result<detail::TimePoint> first_tick(const ScheduleDef& def) {
  return schedule::next_tick(def, std::chrono::system_clock::now());
}

}  // namespace

Result<void> check_schedule(const ScheduleDef& def) {
  auto problems = schedule::schedule_problems(def);
  if (problems.empty()) return {};
  std::vector<Diagnostic> details;
  for (auto& p : problems) details.push_back(Diagnostic{Location{}, std::move(p.message)});
  std::string message = fmt::format("schedule '{}': {}", valid_text(def.name.substr(0, 200)),
                                    details.front().message);
  if (details.size() > 1) message += fmt::format(" (and {} more)", details.size() - 1);
  return make_error(Errc::invalid_argument, std::move(message), std::move(details));
}

Result<bool> save_schedule(detail::RunStore& store, const ScheduleDef& def) {
  if (auto checked = check_schedule(def); !checked) return tl::unexpected(checked.error());
  auto next = first_tick(def);
  if (!next) return tl::unexpected(std::move(next.error()));
  return store.upsert_schedule(def, "api", *next, /*set_paused=*/true);
}

Result<SyncedSchedules> sync_schedules(detail::RunStore& store, const Config& config) {
  const std::string source = "config:" + config.module;
  SyncedSchedules out;
  std::vector<std::string> names;
  for (const auto& def : config.schedules) {
    // Checked when the file was loaded (load_config); the tick is computed here.
    auto next = first_tick(def);
    if (!next) return tl::unexpected(std::move(next.error()));
    auto stored = store.upsert_schedule(def, source, *next, /*set_paused=*/false);
    if (!stored) return tl::unexpected(std::move(stored.error()));
    names.push_back(def.name);
    out.stored += *stored ? 1 : 0;
  }
  auto removed = store.retire_schedules(source, names);
  if (!removed) return tl::unexpected(std::move(removed.error()));
  out.removed = std::move(*removed);
  return out;
}

Result<void> pause_schedule(detail::RunStore& store, std::string_view name, bool paused) {
  auto found = store.list_schedules(name);
  if (!found) return tl::unexpected(std::move(found.error()));
  if (found->empty())
    return make_error(Errc::not_found,
                      fmt::format("no schedule named '{}'", valid_text(name.substr(0, 200))));
  detail::TimePoint next = std::chrono::system_clock::now();
  if (!paused) {
    auto tick = first_tick(found->front().def);
    if (!tick) return tl::unexpected(std::move(tick.error()));
    next = *tick;
  }
  auto done = store.pause_schedule(name, paused, next);
  if (!done) return tl::unexpected(std::move(done.error()));
  if (!*done)
    return make_error(Errc::not_found,
                      fmt::format("no schedule named '{}'", valid_text(name.substr(0, 200))));
  return {};
}

Result<detail::RunInfo> trigger_schedule(detail::RunStore& store, const FlowRegistry& registry,
                                         std::string_view name) {
  auto found = store.list_schedules(name);
  if (!found) return tl::unexpected(std::move(found.error()));
  if (found->empty())
    return make_error(Errc::not_found,
                      fmt::format("no schedule named '{}'", valid_text(name.substr(0, 200))));
  const auto& def = found->front().def;
  auto flow = registry.get(def.flow);
  if (!flow)
    return make_error(Errc::not_found, fmt::format("schedule '{}': flow '{}' is not loaded here",
                                                   def.name, def.flow));
  auto input = schedule::tick_input(def, std::chrono::system_clock::now());
  if (auto checked = check_input(input.dump(), flow->def, "the schedule's input"); !checked)
    return tl::unexpected(std::move(checked.error()));
  auto run = start_run(store, *flow, input, {});
  if (!run) return run;
  if (auto recorded = store.record_schedule_trigger(def.name, run->id); !recorded)
    return tl::unexpected(std::move(recorded.error()));
  return run;
}

std::string schedule_status(const detail::ScheduleRecord& s, detail::TimePoint now) {
  if (s.paused) return "paused";
  if (s.last_outcome &&
      (s.last_outcome->starts_with("error") || s.last_outcome->starts_with("waiting")))
    if (!s.next_fire_at || *s.next_fire_at <= now) return *s.last_outcome;
  if (!s.next_fire_at) return "no next tick";
  if (*s.next_fire_at > now) return "scheduled";
  if (!s.flow_stored)
    return fmt::format("waiting: flow '{}' is not loaded by any worker", s.def.flow);
  const auto late = std::chrono::duration_cast<std::chrono::seconds>(now - *s.next_fire_at);
  return late.count() < 2 ? "due"
                          : fmt::format("due (late by {} s: is a worker serving '{}'?)",
                                        late.count(), s.def.flow);
}

json schedule_json(const detail::ScheduleRecord& s, detail::TimePoint now) {
  json out = json::object();
  out["name"] = s.def.name;
  out["flow"] = s.def.flow;
  out["cron"] = s.def.cron;
  out["timezone"] = s.def.timezone;
  out["input"] = to_ordered(s.def.input);
  out["time_key"] = s.def.time_key;
  out["catch_up"] = s.def.catch_up;
  out["catch_up_max"] = s.def.catch_up_max;
  out["overlap"] = s.def.overlap;
  out["source"] = s.source;
  out["paused"] = s.paused;
  out["status"] = schedule_status(s, now);
  out["next_fire_at"] = s.next_fire_at ? json(iso_time(*s.next_fire_at)) : json(nullptr);
  out["last_tick_at"] = s.last_tick_at ? json(iso_time(*s.last_tick_at)) : json(nullptr);
  out["last_fired_at"] = s.last_fired_at ? json(iso_time(*s.last_fired_at)) : json(nullptr);
  out["last_run_id"] = s.last_run_id ? json(*s.last_run_id) : json(nullptr);
  out["last_run_status"] = s.last_run_status ? json(*s.last_run_status) : json(nullptr);
  out["last_outcome"] = s.last_outcome ? json(*s.last_outcome) : json(nullptr);
  out["fired"] = s.fired;
  out["skipped"] = s.skipped;
  out["created_at"] = iso_time(s.created_at);
  out["updated_at"] = iso_time(s.updated_at);
  return out;
}

Result<ScheduleDef> schedule_from_json(const nlohmann::json& body) {
  if (!body.is_object()) return make_error(Errc::invalid_argument, "a schedule is a JSON object");
  static const std::set<std::string> kKeys = {"name",    "flow",     "cron",     "timezone",
                                              "input",   "time_key", "catch_up", "catch_up_max",
                                              "overlap", "paused"};
  for (const auto& [key, value] : body.items())
    if (!kKeys.contains(key))
      return make_error(Errc::invalid_argument,
                        fmt::format("a schedule has no key '{}' (keys: name, flow, cron, "
                                    "timezone, input, time_key, catch_up, catch_up_max, overlap, "
                                    "paused)",
                                    valid_text(key.substr(0, 200))));
  ScheduleDef def;
  const auto text = [&](const char* key, std::string& into, bool required) -> Result<void> {
    auto it = body.find(key);
    if (it == body.end()) {
      if (required)
        return make_error(Errc::invalid_argument, fmt::format("a schedule needs '{}'", key));
      return {};
    }
    if (!it->is_string())
      return make_error(Errc::invalid_argument, fmt::format("'{}': expected a string", key));
    into = it->get<std::string>();
    return {};
  };
  for (auto [key, into, required] :
       {std::tuple{"name", &def.name, true}, std::tuple{"flow", &def.flow, true},
        std::tuple{"cron", &def.cron, true}, std::tuple{"timezone", &def.timezone, false},
        std::tuple{"time_key", &def.time_key, false}, std::tuple{"catch_up", &def.catch_up, false},
        std::tuple{"overlap", &def.overlap, false}})
    if (auto ok = text(key, *into, required); !ok) return tl::unexpected(ok.error());
  if (auto it = body.find("input"); it != body.end()) def.input = *it;
  if (auto it = body.find("catch_up_max"); it != body.end()) {
    if (!it->is_number_integer() || *it < 1 || *it > 1000)
      return make_error(Errc::invalid_argument, "'catch_up_max': expected an integer, 1 to 1000");
    def.catch_up_max = it->get<int>();
  }
  if (auto it = body.find("paused"); it != body.end()) {
    if (!it->is_boolean())
      return make_error(Errc::invalid_argument, "'paused': expected true or false");
    def.paused = it->get<bool>();
  }
  if (auto checked = check_schedule(def); !checked) return tl::unexpected(checked.error());
  return def;
}

}  // namespace flowreg::app
