// RunStore: storing flow versions, starting runs (one, or a batch by start_runs or by COPY).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <string>

#include "store/queries.hpp"
#include "store/run_store.hpp"
#include "store/run_store_detail.hpp"
#include "util/json_text.hpp"
#include "util/sha256.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

// A run input in a message: its JSON text when short, else its size and SHA-256.
std::string describe_input(std::string_view json) {
  constexpr std::size_t kShown = 200;
  if (json.size() <= kShown) return std::string(json);
  return fmt::format("{}... ({} bytes of JSON, sha256 {})", utf8_prefix(json, 60), json.size(),
                     sha256_hex(json));
}

// Makes the runs `ids`, just started in `tx`, start at `at` (schemas/queries/delay_starts.sql).
void delay_started_runs(pqxx::work& tx, const std::vector<RunId>& ids, TimePoint at) {
  if (ids.empty()) return;
  const std::int64_t us =
      std::chrono::duration_cast<std::chrono::microseconds>(at.time_since_epoch()).count();
  tx.exec_prepared(query_name(Query::delay_starts), fmt::format("{{{}}}", fmt::join(ids, ",")), us);
}

// Gives the runs `ids`, just started in `tx`, their priority
// (schemas/queries/prioritize_runs.sql).
void prioritize_started_runs(pqxx::work& tx, const std::vector<RunId>& ids, int priority) {
  if (ids.empty()) return;
  tx.exec_prepared(query_name(Query::prioritize_runs), fmt::format("{{{}}}", fmt::join(ids, ",")),
                   priority);
}

}  // namespace

Result<bool> RunStore::upsert_flow(const FlowDef& flow, std::string_view version) {
  const std::string what = fmt::format("storing flow '{}' version '{}'", flow.slug, version);
  if (flow.slug.empty() || version.empty())
    return make_error(Errc::invalid_argument, what + ": the slug and the version must be set");
  if (flow.steps.empty())
    return make_error(Errc::invalid_argument, what + ": the flow has no step");
  std::set<std::string_view> declared;
  for (const auto& step : flow.steps)
    if (!declared.insert(step.slug).second)
      return make_error(Errc::invalid_argument,
                        fmt::format("{}: step '{}' is declared twice", what, step.slug));
  for (const auto& step : flow.steps) {
    for (const auto& dep : step.depends_on)
      if (!declared.contains(dep))
        return make_error(Errc::invalid_argument,
                          fmt::format("{}: step '{}' depends on '{}', which is not a step of the "
                                      "flow",
                                      what, step.slug, dep));
    if (step.kind == StepKind::map && step.depends_on.size() > 1)
      return make_error(Errc::invalid_argument,
                        fmt::format("{}: map step '{}' has {} dependencies; a map step has at "
                                    "most one",
                                    what, step.slug, step.depends_on.size()));
  }
  // The declaration order does not matter; a cycle does (validate_flow names it).
  if (topological_order(flow).size() != flow.steps.size())
    return make_error(Errc::invalid_argument,
                      fmt::format("{}: its dependencies form a cycle", what));
  const std::string def = json_text(flow_definition_json(flow));
  return guarded(what, [&]() -> Result<bool> {
    return impl_->exec(Query::upsert_flow, flow.slug, std::string(version), def)[0]["changed"]
        .as<bool>();
  });
}

Result<RunId> RunStore::start_run(std::string_view flow_slug, std::string_view version,
                                  const Json& input, const StartOptions& options) {
  const std::string what = fmt::format("starting a run of flow '{}' version '{}'",
                                       shown_name(flow_slug), shown_name(version));
  if (options.idempotency_key && options.idempotency_key->empty())
    return make_error(Errc::invalid_argument, what + ": the idempotency key is empty");
  const std::string text = json_text(input);
  return guarded(what, [&]() -> Result<RunId> {
    const bool with = options.idempotency_key || options.retry_of;
    const auto start = [&](pqxx::work& tx) {
      return with ? tx.exec_prepared(query_name(Query::start_run_with), std::string(flow_slug),
                                     std::string(version), text,
                                     options.idempotency_key.value_or(""),
                                     options.retry_of.value_or(""))
                  : tx.exec_prepared(query_name(Query::start_run), std::string(flow_slug),
                                     std::string(version), text);
    };
    // A delayed start or one with a priority: the start and its time or priority in one
    // transaction; any other, one statement.
    auto rows =
        !options.start_at && !options.priority
            ? (with ? impl_->exec(Query::start_run_with, std::string(flow_slug),
                                  std::string(version), text, options.idempotency_key.value_or(""),
                                  options.retry_of.value_or(""))
                    : impl_->exec(Query::start_run, std::string(flow_slug), std::string(version),
                                  text))
            : impl_->transact([&](pqxx::work& tx) {
                auto started = start(tx);
                if (!started.empty() && started[0]["created"].as<bool>()) {
                  const std::vector<RunId> id{started[0]["run_id"].as<std::string>()};
                  if (options.start_at) delay_started_runs(tx, id, *options.start_at);
                  if (options.priority) prioritize_started_runs(tx, id, *options.priority);
                }
                return started;
              });
    if (rows.empty()) return make_error(Errc::internal, what + ": no run returned");
    RunId id = rows[0]["run_id"].as<std::string>();
    const bool created = rows[0]["created"].as<bool>();
    if (created || !options.idempotency_key) return id;
    // The key was used before: by the same input (compared as jsonb: key order and spacing do
    // not matter), that run is the answer; by another input, the key is being reused by mistake.
    auto prior = impl_->exec(Query::same_input, id, text);
    if (prior.empty() || prior[0]["same"].as<bool>()) return id;
    return make_error(
        Errc::invalid_argument,
        fmt::format("{}: conflict: idempotency key '{}' was already used by run {} with another "
                    "input (a key stands for one input; use a new key for a new input)\n"
                    "  that run's input: {}\n  this input:       {}",
                    what, shown_name(*options.idempotency_key), id,
                    describe_input(row_text(prior[0]["input"])), describe_input(text)));
  });
}

namespace {

constexpr std::size_t kCopiedStartMax = 1 << 30;  // p_n is an int

// Writes the runs `plan` names (flowreg._start_copying's rows, one per input, in order) and their
// tasks with two COPYs in `tx`: the rows start_run's short path inserts (schemas/functions).
std::vector<RunId> copy_runs(pqxx::work& tx, const pqxx::result& plan, std::string_view flow_slug,
                             std::string_view version, std::span<const Json> inputs) {
  const std::string slug(flow_slug);
  const std::string ver(version);
  std::vector<RunId> ids;
  std::vector<std::int64_t> task_ids;
  ids.reserve(plan.size());
  task_ids.reserve(plan.size());
  for (const auto& row : plan) {
    ids.push_back(row[0].as<std::string>());
    task_ids.push_back(row[1].as<std::int64_t>());
  }
  {
    pqxx::stream_to runs(tx, "flowreg.runs",
                         std::vector<std::string>{"id", "flow_slug", "flow_version", "input",
                                                  "remaining_leaves", "attempts", "task_id"});
    for (std::size_t i = 0; i < ids.size(); ++i)
      runs << std::make_tuple(ids[i], slug, ver, json_text(inputs[i]), 1, 0, task_ids[i]);
    runs.complete();
  }
  // The step, the same in every row.
  const auto step_slug = plan[0][2].as<std::string>();
  const auto timeout_ms = plan[0][3].as<std::int64_t>();
  const auto priority = plan[0][4].as<int>();
  std::vector<std::string> columns{"id",        "run_id",       "step_slug",  "task_index",
                                   "flow_slug", "flow_version", "timeout_ms", "solo"};
  // The step's priority (migration 0022): written when it is not the column's default, 0.
  if (priority != 0) columns.emplace_back("priority");
  pqxx::stream_to tasks(tx, "flowreg.tasks", columns);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (priority != 0)
      tasks << std::make_tuple(task_ids[i], ids[i], step_slug, 0, slug, ver, timeout_ms, true,
                               priority);
    else
      tasks << std::make_tuple(task_ids[i], ids[i], step_slug, 0, slug, ver, timeout_ms, true);
  }
  tasks.complete();
  return ids;
}

}  // namespace

Result<std::vector<RunId>> RunStore::start_runs(std::string_view flow_slug,
                                                std::string_view version,
                                                std::span<const Json> inputs,
                                                std::optional<TimePoint> start_at,
                                                std::optional<int> priority) {
  const std::string what = fmt::format("starting {} runs of flow '{}' version '{}'", inputs.size(),
                                       shown_name(flow_slug), shown_name(version));
  return guarded(what, [&]() -> Result<std::vector<RunId>> {
    std::vector<RunId> out;
    try {
      const auto all_inputs = [&] {
        Json all = Json::array();
        for (const auto& input : inputs) all.push_back(input);
        return json_text(all);
      };
      const auto ids_of = [](const pqxx::result& rows) {
        std::vector<RunId> ids;
        ids.reserve(rows.size());
        for (const auto& row : rows) ids.push_back(row["run_id"].as<std::string>());
        return ids;
      };
      const auto by_start_runs = [&](pqxx::work& tx) {
        return ids_of(tx.exec_prepared(query_name(Query::start_runs), std::string(flow_slug),
                                       std::string(version), all_inputs()));
      };
      const std::string name = fmt::format("{}:{}{}", flow_slug.size(), flow_slug, version);
      const bool copyable = inputs.size() >= kCopiedStartMin && inputs.size() <= kCopiedStartMax &&
                            !impl_->uncopied.contains(name);
      if (start_at || priority) {
        // A delayed start or one with a priority: the runs (one call of start_runs, or copied as
        // below) and their time or priority in one transaction.
        bool copied = false;
        out = impl_->transact([&](pqxx::work& tx) {
          std::vector<RunId> ids;
          if (copyable) {
            const pqxx::result plan =
                tx.exec_prepared(query_name(Query::start_copying), std::string(flow_slug),
                                 std::string(version), static_cast<int>(inputs.size()));
            copied = plan.size() == inputs.size();
            if (copied) ids = copy_runs(tx, plan, flow_slug, version, inputs);
          }
          if (!copied) ids = by_start_runs(tx);
          if (start_at) delay_started_runs(tx, ids, *start_at);
          if (priority) prioritize_started_runs(tx, ids, *priority);
          return ids;
        });
      } else if (!copyable) {
        // One call of start_runs, in autocommit (one round trip).
        out = ids_of(impl_->exec(Query::start_runs, std::string(flow_slug), std::string(version),
                                 all_inputs()));
      } else {
        // One transaction: the runs by COPY after _start_copying gave their ids; for a flow
        // version it cannot copy (no row), start_runs.
        bool copied = false;
        out = impl_->transact([&](pqxx::work& tx) {
          const pqxx::result plan =
              tx.exec_prepared(query_name(Query::start_copying), std::string(flow_slug),
                               std::string(version), static_cast<int>(inputs.size()));
          copied = plan.size() == inputs.size();
          return copied ? copy_runs(tx, plan, flow_slug, version, inputs) : by_start_runs(tx);
        });
        if (!copied) {  // stored (else start_runs raised P0002), not copyable
          if (impl_->uncopied.size() >= Impl::kUncopiedMax) impl_->uncopied.clear();
          impl_->uncopied.insert(name);
        }
      }
    } catch (const pqxx::sql_error& e) {
      // The server refused a value, and no run started: name the first input it cannot store
      // (else its own message stands).
      if (!refused_class(e) || impl_->lost) throw;
      for (std::size_t i = 0; i < inputs.size(); ++i)
        if (auto why = stored_json_problem(inputs[i], "input"))
          return make_error(Errc::invalid_argument,
                            fmt::format("{}: input {} (of {}, counted from 0): {}; no run started",
                                        what, i, inputs.size(), *why));
      throw;
    }
    return out;
  });
}

}  // namespace flowreg::detail
