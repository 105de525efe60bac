// RunStore: connecting, the session; the plain functions of run_store.hpp; what the other
// run_store_*.cpp files share (run_store_detail.hpp).
#include "store/run_store.hpp"

#include <fmt/format.h>

#include <pqxx/pqxx>
#include <utility>

#include "store/conninfo.hpp"
#include "store/queries.hpp"
#include "store/run_store_detail.hpp"
#include "util/enum_names.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

TimePoint from_micros(std::int64_t us) {
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(std::chrono::microseconds(us)));
}

std::string row_text(const pqxx::field& f) {
  return utf8_valid(std::string_view(f.c_str(), f.size()));
}

Json row_json(const pqxx::field& f) { return Json::parse(row_text(f)); }

std::string shown_name(std::string_view name) { return bounded_text(name, 200); }

std::string server_text(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (text.starts_with("ERROR:  ")) text.remove_prefix(8);
  return bounded_text(text, 2000);
}

bool refused_class(const pqxx::sql_error& e) {
  // 22: data exception (e.g. unsupported Unicode escape sequence); 54: program limit exceeded
  // (e.g. stack depth limit exceeded while parsing deeply nested JSON).
  const std::string state = e.sqlstate();
  return state.rfind("22", 0) == 0 || state.rfind("54", 0) == 0;
}

namespace {

constexpr EnumName<RunStatus> kRunStatusNames[] = {{RunStatus::started, "started"},
                                                   {RunStatus::completed, "completed"},
                                                   {RunStatus::failed, "failed"},
                                                   {RunStatus::cancelled, "cancelled"}};

}  // namespace

std::string_view to_string(RunStatus status) noexcept {
  return name_in(kRunStatusNames, status, "?");
}

std::optional<RunStatus> parse_run_status(std::string_view text) noexcept {
  return value_in(kRunStatusNames, text);
}

Json concurrency_json(const Concurrency& c) {
  Json out{{"limit", c.limit}};
  if (c.key) out["key"] = *c.key;
  return out;
}

Json rate_limit_json(const RateLimit& r) {
  Json out{{"limit", r.limit}, {"per_ms", r.per.count()}};
  if (r.key) out["key"] = *r.key;
  return out;
}

Json flow_definition_json(const FlowDef& flow) {
  // Steps are stored dependencies first (the store numbers them in this order): a flow may list
  // them in any order that validates. topological_order is stable (each time the earliest
  // declared ready step), so a flow written in dependency order keeps its own order.
  Json steps = Json::array();
  for (const StepDef* s : topological_order(flow)) {
    const StepDef& step = *s;
    const Options o = flow.step_options(step);
    Json options{{"max_attempts", o.max_attempts},
                 {"base_delay_ms", o.base_delay.count()},
                 {"max_delay_ms", o.max_delay.count()},
                 {"timeout_ms", o.timeout.count()}};
    // Stored when set (migration 0022), so that a definition stored before priorities existed
    // is the same definition.
    if (o.priority != Options::kDefaultPriority) options["priority"] = o.priority;
    Json stored{{"slug", step.slug},
                {"kind", std::string(to_string(step.kind))},
                {"depends_on", step.depends_on},
                {"handler", step.handler},
                {"options", std::move(options)}};
    // Concurrency limits (migration 0023, upsert_flow's _set_gates), stored when set.
    if (step.concurrency) stored["concurrency"] = concurrency_json(*step.concurrency);
    // Rate limits (migration 0024), stored when set.
    if (step.rate_limit) stored["rate_limit"] = rate_limit_json(*step.rate_limit);
    // A sleep step's sleep (migration 0025: upsert_flow writes flow_steps.sleep_ms, sleep_path).
    if (step.sleep && step.sleep->duration)
      stored["sleep"] = Json{{"ms", step.sleep->duration->count()}};
    else if (step.sleep && step.sleep->until)
      stored["sleep"] = Json{{"until", *step.sleep->until}};
    // A wait step's wait (migration 0026: upsert_flow writes flow_steps.wait_*).
    if (step.wait) {
      const Wait& w = *step.wait;
      Json wait = Json::object();
      if (w.signal) wait["signal"] = *w.signal;
      if (w.event) {
        wait["event"] = *w.event;
        Json match = Json::object();
        for (const auto& [at, from] : w.match) match[at] = from;
        wait["match"] = std::move(match);
      }
      if (w.timeout) wait["timeout_ms"] = w.timeout->count();
      if (w.default_output) wait["default"] = *w.default_output;
      stored["wait"] = std::move(wait);
    }
    // A condition and a trigger (migration 0027: upsert_flow writes flow_steps.when_cond,
    // trigger_any, checked), stored when set.
    if (step.when) stored["when"] = *step.when;
    if (step.trigger == Trigger::any) stored["trigger"] = "any";
    // A flow step's child flow (migration 0028: upsert_flow writes flow_steps.child_flow, and the
    // kind flow_map for a map over it).
    if (step.child) stored["child"] = Json{{"flow", step.child->flow}, {"map", step.child->map}};
    steps.push_back(std::move(stored));
  }
  Json out{{"slug", flow.slug},
           {"steps", std::move(steps)},
           {"input_schema", flow.input_schema.value_or(Json(nullptr))}};
  if (flow.concurrency) out["concurrency"] = concurrency_json(*flow.concurrency);
  if (flow.rate_limit) out["rate_limit"] = rate_limit_json(*flow.rate_limit);
  // Its retention (flowreg.retain reads the version stored last), the ages it sets: milliseconds,
  // or null to keep. Stored when set, so that a definition stored before retention existed is the
  // same definition.
  if (!flow.retention.empty()) {
    Json retention = Json::object();
    const auto put = [&](const char* key, const std::optional<Millis>& age) {
      if (age) retention[key] = *age == Retention::kKeep ? Json(nullptr) : Json(age->count());
    };
    put("completed_ms", flow.retention.completed);
    put("failed_ms", flow.retention.failed);
    put("cancelled_ms", flow.retention.cancelled);
    out["retention"] = std::move(retention);
  }
  return out;
}

std::optional<std::string> stored_json_problem(const Json& root, std::string_view what) {
  std::vector<std::pair<const Json*, std::size_t>> todo{{&root, 1}};
  while (!todo.empty()) {
    const auto [j, depth] = todo.back();
    todo.pop_back();
    if (j->is_string()) {
      if (j->get_ref<const std::string&>().find('\0') != std::string::npos)
        return fmt::format(
            "the {} holds a string with the character U+0000, which PostgreSQL cannot store", what);
      continue;
    }
    if (!j->is_structured()) continue;
    if (depth > kMaxStoredDepth)
      return fmt::format("the {} nests deeper than {} levels", what, kMaxStoredDepth);
    if (j->is_object()) {
      for (const auto& [key, value] : j->items()) {
        if (key.find('\0') != std::string::npos)
          return fmt::format(
              "the {} holds a key with the character U+0000, which PostgreSQL cannot store", what);
        todo.emplace_back(&value, depth + 1);
      }
    } else {
      for (const auto& value : *j) todo.emplace_back(&value, depth + 1);
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// RunStore

RunStore::Impl::Impl(const std::string& conninfo) : conn(with_connection_defaults(conninfo)) {
  // Sequential scans, bitmap scans and JIT off for the session: see the file for why.
  pqxx::nontransaction(conn).exec0(std::string(query_sql(Query::session_settings)));
  // Every other statement is prepared once per connection, under its file's name, but
  // scrape_counts, sent with its parameters on each call.
  for (const QueryFile& q : builtin_queries())
    if (q.query != Query::session_settings && q.query != Query::scrape_counts)
      conn.prepare(q.name, std::string(q.sql));
}

RunStore::RunStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RunStore::RunStore(RunStore&&) noexcept = default;
RunStore& RunStore::operator=(RunStore&&) noexcept = default;
RunStore::~RunStore() = default;

Result<RunStore> RunStore::connect(const std::string& conninfo) {
  return guarded("connecting to the run store",
                 [&]() -> Result<RunStore> { return RunStore(std::make_unique<Impl>(conninfo)); });
}

bool RunStore::connection_lost() const noexcept { return impl_ == nullptr || impl_->lost; }

}  // namespace flowreg::detail
