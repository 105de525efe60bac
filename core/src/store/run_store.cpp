#include "store/run_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <pqxx/pqxx>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "store/conninfo.hpp"
#include "store/queries.hpp"
#include "util/enum_names.hpp"
#include "util/json_text.hpp"
#include "util/sha256.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

TimePoint from_micros(std::int64_t us) {
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(std::chrono::microseconds(us)));
}

std::optional<TimePoint> opt_time(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return from_micros(f.as<std::int64_t>());
}

// Text read from the server enters here. A UTF8 database only holds valid UTF-8, but a
// database.url may name one in SQL_ASCII, which stores any byte: invalid sequences become U+FFFD.
std::string row_text(const pqxx::field& f) {
  return utf8_valid(std::string_view(f.c_str(), f.size()));
}

std::optional<std::string> opt_text(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return row_text(f);
}

Json row_json(const pqxx::field& f) { return Json::parse(row_text(f)); }

std::optional<Json> opt_json(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return row_json(f);
}

// A run input in a message: its JSON text when short, else its size and SHA-256.
std::string describe_input(std::string_view json) {
  constexpr std::size_t kShown = 200;
  if (json.size() <= kShown) return std::string(json);
  return fmt::format("{}... ({} bytes of JSON, sha256 {})", utf8_prefix(json, 60), json.size(),
                     sha256_hex(json));
}

// A name a caller gave (a flow slug or version, a run id, an idempotency key) in a message: at
// most 200 bytes of it (a 100,000-byte slug would otherwise be repeated in full), valid UTF-8.
std::string shown_name(std::string_view name) { return bounded_text(name, 200); }

// The text of a libpq/pqxx exception as one line of a message: valid UTF-8 (it comes from the
// server), without the trailing newlines libpq ends its messages with, nor its "ERROR:  " prefix,
// and at most 2,000 bytes of it (the server's message may quote what it was given in full).
std::string server_text(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  if (text.starts_with("ERROR:  ")) text.remove_prefix(8);
  return bounded_text(text, 2000);
}

// Runs `body`, translating what pqxx and the JSON parser throw into an Error naming `what` (made
// valid UTF-8: it may hold a caller's slug or run id as given).
template <class F>
auto guarded(std::string_view what, F&& body) -> decltype(body()) {
  const auto fail = [&](Errc code, std::string_view how, const char* text) {
    return make_error(code, fmt::format("{}: {}{}", utf8_valid(what), how, server_text(text)));
  };
  try {
    return body();
  } catch (const pqxx::sql_error& e) {
    const std::string state = e.sqlstate();
    Errc code = Errc::database;
    if (state == "P0002") code = Errc::not_found;
    if (state == "22023" || state == "22P02") code = Errc::invalid_argument;
    // Connection exceptions (08) and operator intervention (57: shutdown, crash recovery).
    if (state.rfind("08", 0) == 0 || state.rfind("57", 0) == 0) code = Errc::unavailable;
    return fail(code, "", e.what());
  } catch (const pqxx::broken_connection& e) {
    return fail(Errc::unavailable, "connection lost: ", e.what());
  } catch (const pqxx::in_doubt_error& e) {
    return fail(Errc::unavailable, "connection lost during commit: ", e.what());
  } catch (const std::exception& e) {
    return fail(Errc::database, "", e.what());
  }
}

// A run from the columns of a run (schemas/queries/get_run.sql, list_runs.sql).
RunInfo run_of(const pqxx::row& r) {
  RunInfo info;
  info.id = r["id"].as<std::string>();
  info.flow_slug = r["flow_slug"].as<std::string>();
  info.flow_version = r["flow_version"].as<std::string>();
  info.status = parse_run_status(r["status"].as<std::string>()).value_or(RunStatus::started);
  info.input = row_json(r["input"]);
  info.output = opt_json(r["output"]);
  info.error = opt_text(r["error"]);
  info.created_at = from_micros(r["created_at_us"].as<std::int64_t>());
  info.finished_at = opt_time(r["finished_at_us"]);
  info.retry_of = opt_text(r["retry_of"]);
  info.idempotency_key = opt_text(r["idempotency_key"]);
  return info;
}

// A claimed task from the columns of a claimed task (schemas/queries/claim.sql, work.sql), or why
// its row cannot be run: a column the claim could not fill (NULL max_attempts: its step is no
// longer in flow_steps; NULL input: its run, or the step state of a dependency, is gone) or an
// input that is not JSON. Such rows come only from rows deleted under flowreg's guards (by hand, or
// by another program); the caller fails that task alone. The id and the attempt are NOT NULL
// columns, read first.
tl::expected<ClaimedTask, std::string> claimed_task(const pqxx::row& r) {
  ClaimedTask t;
  t.id = r["id"].as<TaskId>();
  t.attempt = r["attempt"].as<int>();
  t.run_id = row_text(r["run_id"]);
  t.flow_slug = row_text(r["flow_slug"]);
  t.flow_version = row_text(r["flow_version"]);
  t.step_slug = row_text(r["step_slug"]);
  if (r["max_attempts"].is_null())
    return tl::make_unexpected(fmt::format(
        "its step '{}' of flow '{}' version '{}' is no longer stored (flowreg.flow_steps)",
        shown_name(t.step_slug), shown_name(t.flow_slug), shown_name(t.flow_version)));
  if (r["input"].is_null())
    return tl::make_unexpected(fmt::format(
        "its input could not be read: its run {} or the step state of a dependency is gone",
        shown_name(t.run_id)));
  try {
    t.input = row_json(r["input"]);
  } catch (const Json::exception& e) {
    return tl::make_unexpected(fmt::format("its input is not JSON: {}", e.what()));
  }
  t.task_index = r["task_index"].as<int>();
  t.max_attempts = r["max_attempts"].as<int>();
  t.timeout = Millis(r["timeout_ms"].as<std::int64_t>());
  t.lease_expires_at = from_micros(r["lease_expires_at_us"].as<std::int64_t>());
  return t;
}

// The permanent failure recorded for a claimed task that cannot be run (see claimed_task).
Failure unusable_failure(const pqxx::row& r, std::string_view why) {
  return Failure{r["id"].as<TaskId>(), r["attempt"].as<int>(),
                 fmt::format("flowreg cannot run this task: {}", why), true};
}

// The task ids of a result with a column `id`.
std::vector<TaskId> ids_of(const pqxx::result& rows) {
  std::vector<TaskId> out;
  out.reserve(rows.size());
  for (const auto& row : rows) out.push_back(row["id"].as<TaskId>());
  return out;
}

}  // namespace

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

Json flow_definition_json(const FlowDef& flow) {
  // Steps are stored dependencies first (the store numbers them in this order): a flow may list
  // them in any order that validates. topological_order is stable (each time the earliest
  // declared ready step), so a flow written in dependency order keeps its own order.
  Json steps = Json::array();
  for (const StepDef* s : topological_order(flow)) {
    const StepDef& step = *s;
    const Options o = flow.step_options(step);
    steps.push_back({{"slug", step.slug},
                     {"kind", std::string(to_string(step.kind))},
                     {"depends_on", step.depends_on},
                     {"handler", step.handler},
                     {"options",
                      {{"max_attempts", o.max_attempts},
                       {"base_delay_ms", o.base_delay.count()},
                       {"max_delay_ms", o.max_delay.count()},
                       {"timeout_ms", o.timeout.count()}}}});
  }
  return {{"slug", flow.slug},
          {"steps", std::move(steps)},
          {"input_schema", flow.input_schema.value_or(Json(nullptr))}};
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

namespace {

// A completion the server cannot store, as the permanent failure recorded in its place.
Failure refused_failure(const Completion& c, std::string_view why) {
  return Failure{c.id, c.attempt, fmt::format("the database refused the handler's output: {}", why),
                 true};
}

bool refused_class(const pqxx::sql_error& e) {
  // 22: data exception (e.g. unsupported Unicode escape sequence); 54: program limit exceeded
  // (e.g. stack depth limit exceeded while parsing deeply nested JSON).
  const std::string state = e.sqlstate();
  return state.rfind("22", 0) == 0 || state.rfind("54", 0) == 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RunStore

struct RunStore::Impl {
  explicit Impl(const std::string& conninfo) : conn(with_connection_defaults(conninfo)) {
    // Sequential scans, bitmap scans and JIT off for the session: see the file for why.
    pqxx::nontransaction(conn).exec0(std::string(query_sql(Query::session_settings)));
    // Every other statement is prepared once per connection, under its file's name, but
    // scrape_counts, sent with its parameters on each call.
    for (const QueryFile& q : builtin_queries())
      if (q.query != Query::session_settings && q.query != Query::scrape_counts)
        conn.prepare(q.name, std::string(q.sql));
  }

  // Runs a prepared statement in autocommit. A deadlock or serialization failure aborted the
  // statement's whole transaction (nothing of it was written): it is sent again, after a short
  // randomized pause, up to kTransientRetries times in all.
  template <class... Args>
  pqxx::result exec(Query query, const Args&... args) {
    return retried([&] { return exec_once(query, args...); });
  }

  template <class... Args>
  pqxx::result exec_once(Query query, const Args&... args) {
    return once([&] {
      pqxx::nontransaction tx(conn);  // autocommit: the function call is its own transaction
      return tx.exec_prepared(query_name(query), args...);
    });
  }

  // Runs body(tx) in one transaction (READ COMMITTED), committed when body returns, rolled back
  // when it throws; retried whole, like exec's statement, after a deadlock or serialization
  // failure.
  template <class F>
  auto transact(F&& body) -> decltype(body(std::declval<pqxx::work&>())) {
    return retried([&] {
      return once([&] {
        pqxx::work tx(conn);
        auto out = body(tx);
        tx.commit();
        return out;
      });
    });
  }

  // Calls f, again after a deadlock or serialization failure (see exec).
  template <class F>
  auto retried(F&& f) -> decltype(f()) {
    for (int attempt = 1;; ++attempt) {
      try {
        return f();
      } catch (const pqxx::sql_error& e) {
        const std::string state = e.sqlstate();
        if ((state != "40P01" && state != "40001") || attempt >= kTransientRetries || lost) throw;
        std::uniform_int_distribution<int> pause_us(200, 1000 << attempt);
        std::this_thread::sleep_for(std::chrono::microseconds(pause_us(rng)));
      }
    }
  }

  // Calls f, marking the connection lost when what it throws says so.
  template <class F>
  auto once(F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const pqxx::broken_connection&) {
      lost = true;
      throw;
    } catch (const pqxx::in_doubt_error&) {
      lost = true;
      throw;
    } catch (const pqxx::sql_error& e) {
      const std::string state = e.sqlstate();
      if (state.rfind("08", 0) == 0 || state.rfind("57", 0) == 0 || !conn.is_open()) lost = true;
      throw;
    } catch (const pqxx::failure&) {
      if (!conn.is_open()) lost = true;
      throw;
    }
  }

  // Why the server refuses `json` as jsonb (its message), or nullopt when it accepts it.
  std::optional<std::string> output_refusal(const std::string& json) {
    try {
      exec_once(Query::probe_output, json);
      return std::nullopt;
    } catch (const pqxx::sql_error& e) {
      // Only a refusal of the value itself; anything else (the connection, memory, a lock) is
      // not this output's fault and fails the call as before.
      if (lost || !refused_class(e)) throw;
      return server_text(e.what());
    }
  }

  bool record_unusable(std::span<const Failure> unusable);

  pqxx::connection conn;
  bool lost = false;
  std::minstd_rand rng{std::random_device{}()};
  // Flow versions start_runs started without COPY (several steps, a map step; see
  // RunStore::start_runs), "<slug's length>:<slug><version>": their next batches skip
  // _start_copying. Should a version be stored again with one step under the same name, its
  // batches still start right, by start_runs. Bounded: emptied when full.
  std::set<std::string, std::less<>> uncopied;
  static constexpr std::size_t kUncopiedMax = 4096;
};

RunStore::RunStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RunStore::RunStore(RunStore&&) noexcept = default;
RunStore& RunStore::operator=(RunStore&&) noexcept = default;
RunStore::~RunStore() = default;

Result<RunStore> RunStore::connect(const std::string& conninfo) {
  return guarded("connecting to the run store",
                 [&]() -> Result<RunStore> { return RunStore(std::make_unique<Impl>(conninfo)); });
}

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
    auto rows =
        options.idempotency_key || options.retry_of
            ? impl_->exec(Query::start_run_with, std::string(flow_slug), std::string(version), text,
                          options.idempotency_key.value_or(""), options.retry_of.value_or(""))
            : impl_->exec(Query::start_run, std::string(flow_slug), std::string(version), text);
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
  pqxx::stream_to tasks(
      tx, "flowreg.tasks",
      std::vector<std::string>{"id", "run_id", "step_slug", "task_index", "flow_slug",
                               "flow_version", "timeout_ms", "solo"});
  for (std::size_t i = 0; i < ids.size(); ++i)
    tasks << std::make_tuple(task_ids[i], ids[i], step_slug, 0, slug, ver, timeout_ms, true);
  tasks.complete();
  return ids;
}

}  // namespace

Result<std::vector<RunId>> RunStore::start_runs(std::string_view flow_slug,
                                                std::string_view version,
                                                std::span<const Json> inputs) {
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
      if (inputs.size() < kCopiedStartMin || inputs.size() > kCopiedStartMax ||
          impl_->uncopied.contains(name)) {
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

namespace {

Json completions_json(std::span<const Completion> completions) {
  Json batch = Json::array();
  for (const auto& c : completions)
    batch.push_back({{"id", c.id}, {"attempt", c.attempt}, {"output", c.output}});
  return batch;
}

Json failures_json(std::span<const Failure> failures) {
  Json batch = Json::array();
  for (const auto& f : failures) {
    // jsonb cannot hold U+0000: such a character of an error message is stored as U+FFFD.
    std::string error = f.error;
    for (std::size_t at = error.find('\0'); at != std::string::npos; at = error.find('\0', at))
      error.replace(at, 1, "\xEF\xBF\xBD");
    batch.push_back(
        {{"id", f.id}, {"attempt", f.attempt}, {"error", error}, {"permanent", f.permanent}});
  }
  return batch;
}

Json flow_keys_json(std::span<const FlowKey> flows) {
  Json keys = Json::array();
  for (const auto& f : flows) keys.push_back({{"slug", f.slug}, {"version", f.version}});
  return keys;
}

}  // namespace

// Fails the claimed tasks that cannot be run (see claimed_task); true when recorded. Should that
// call fail (the connection lost), the claim's other tasks are returned all the same: those tasks
// come back when their leases expire, and are failed then.
bool RunStore::Impl::record_unusable(std::span<const Failure> unusable) {
  if (unusable.empty()) return false;
  try {
    exec(Query::fail, json_text(failures_json(unusable)));
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

Result<std::vector<ClaimedTask>> RunStore::claim(std::string_view worker_id,
                                                 std::span<const FlowKey> flows, int limit) {
  if (limit <= 0 || flows.empty()) return std::vector<ClaimedTask>{};
  const Json keys = flow_keys_json(flows);
  return guarded("claiming tasks", [&]() -> Result<std::vector<ClaimedTask>> {
    auto rows = impl_->exec(Query::claim, std::string(worker_id), json_text(keys), limit);
    std::vector<ClaimedTask> out;
    std::vector<Failure> unusable;
    out.reserve(rows.size());
    for (const auto& r : rows) {
      if (auto t = claimed_task(r))
        out.push_back(std::move(*t));
      else
        unusable.push_back(unusable_failure(r, t.error()));
    }
    impl_->record_unusable(unusable);
    return out;
  });
}

Result<std::vector<TaskId>> RunStore::renew(std::string_view worker_id,
                                            std::span<const TaskAttempt> tasks,
                                            std::optional<Millis> lease, bool skip_locked) {
  if (tasks.empty()) return std::vector<TaskId>{};
  Json batch = Json::array();
  for (const auto& t : tasks) batch.push_back({{"id", t.id}, {"attempt", t.attempt}});
  const std::int64_t lease_ms = lease ? static_cast<std::int64_t>(lease->count()) : -1;
  return guarded("renewing leases", [&]() -> Result<std::vector<TaskId>> {
    return ids_of(
        impl_->exec(Query::renew, std::string(worker_id), json_text(batch), lease_ms, skip_locked));
  });
}

Result<std::vector<CrashOutcome>> RunStore::report_crashes(std::span<const CrashReport> reports,
                                                           int limit) {
  if (reports.empty()) return std::vector<CrashOutcome>{};
  Json batch = Json::array();
  for (const auto& r : reports)
    batch.push_back({{"id", r.id},
                     {"attempt", r.attempt},
                     {"signal", r.signal ? Json(*r.signal) : Json(nullptr)}});
  return guarded("reporting crashed handlers", [&]() -> Result<std::vector<CrashOutcome>> {
    std::vector<CrashOutcome> out;
    for (const auto& row : impl_->exec(Query::report_crashes, json_text(batch), limit)) {
      const std::string_view kind = row["outcome"].c_str();
      out.push_back(
          CrashOutcome{row["id"].as<TaskId>(), kind == "failed"    ? CrashOutcome::Kind::failed
                                               : kind == "counted" ? CrashOutcome::Kind::counted
                                                                   : CrashOutcome::Kind::stale});
    }
    return out;
  });
}

Result<WorkResult> RunStore::work(std::string_view worker_id,
                                  std::span<const Completion> completions,
                                  std::span<const Failure> failures, std::span<const FlowKey> flows,
                                  int limit, std::optional<Millis> lease) {
  const std::int64_t lease_ms = lease ? static_cast<std::int64_t>(lease->count()) : -1;
  const std::string keys = json_text(flow_keys_json(flows));
  // Outputs the server would refuse become permanent failures of their tasks before sending.
  std::vector<Completion> kept;
  std::vector<Failure> failed(failures.begin(), failures.end());
  std::vector<TaskId> refused;
  kept.reserve(completions.size());
  for (const auto& c : completions) {
    if (auto why = stored_json_problem(c.output, "output")) {
      failed.push_back(refused_failure(c, *why));
      refused.push_back(c.id);
    } else {
      kept.push_back(c);
    }
  }
  return guarded("recording results and claiming tasks", [&]() -> Result<WorkResult> {
    const auto call = [&] {
      return impl_->exec(Query::work, std::string(worker_id), json_text(completions_json(kept)),
                         json_text(failures_json(failed)), keys, std::max(limit, 0), lease_ms);
    };
    pqxx::result rows;
    try {
      rows = call();
    } catch (const pqxx::sql_error& e) {
      // Whatever else the server refused made the whole call fail, and nothing was written: find
      // the outputs it refuses, one by one, fail those tasks alone, and record the rest.
      if (kept.empty() || !refused_class(e) || impl_->lost) throw;
      std::vector<Completion> accepted;
      for (const auto& c : kept) {
        if (auto why = impl_->output_refusal(json_text(c.output))) {
          failed.push_back(refused_failure(c, *why));
          refused.push_back(c.id);
        } else {
          accepted.push_back(c);
        }
      }
      if (accepted.size() == kept.size()) throw;  // not an output: the error stands
      kept = std::move(accepted);
      rows = call();
    }
    WorkResult out;
    std::vector<Failure> unusable;
    out.claimed.reserve(rows.size());
    for (const auto& r : rows) {
      const std::string_view kind = r["kind"].c_str();
      if (kind == "rejected") {
        out.rejected.push_back(r["id"].as<TaskId>());
      } else if (kind == "due") {
        out.next_due_in = Millis(std::max<std::int64_t>(0, r["due_in_ms"].as<std::int64_t>()));
      } else if (auto t = claimed_task(r)) {
        out.claimed.push_back(std::move(*t));
      } else {
        unusable.push_back(unusable_failure(r, t.error()));
      }
    }
    // A claimed task that cannot be run fails alone, permanently, with the reason; the batch's
    // other tasks are returned.
    if (impl_->record_unusable(unusable))
      for (const auto& f : unusable) out.unusable.push_back(f.id);
    // A refused completion whose failure was rejected (attempt no longer current) is only that.
    std::erase_if(refused, [&](TaskId id) {
      return std::find(out.rejected.begin(), out.rejected.end(), id) != out.rejected.end();
    });
    out.refused = std::move(refused);
    return out;
  });
}

Result<std::vector<TaskId>> RunStore::release(std::string_view worker_id,
                                              std::span<const Release> tasks) {
  if (tasks.empty()) return std::vector<TaskId>{};
  Json batch = Json::array();
  for (const auto& t : tasks)
    batch.push_back({{"id", t.id}, {"attempt", t.attempt}, {"ran", t.ran}});
  return guarded("releasing tasks", [&]() -> Result<std::vector<TaskId>> {
    return ids_of(impl_->exec(Query::release, std::string(worker_id), json_text(batch)));
  });
}

Result<void> RunStore::heartbeat(const WorkerRecord& worker, bool stopped) {
  const std::string keys = json_text(flow_keys_json(worker.flows));
  return guarded(fmt::format("recording the heartbeat of worker {}", worker.id),
                 [&]() -> Result<void> {
                   const std::int64_t every_ms =
                       worker.heartbeat_interval
                           ? static_cast<std::int64_t>(worker.heartbeat_interval->count())
                           : -1;
                   impl_->exec(Query::heartbeat, worker.id, worker.host, worker.pid, keys,
                               worker.concurrency, stopped, worker.state, every_ms);
                   return {};
                 });
}

Result<std::vector<WorkerRecord>> RunStore::list_workers() {
  return guarded("listing workers", [&]() -> Result<std::vector<WorkerRecord>> {
    std::vector<WorkerRecord> out;
    for (const auto& r : impl_->exec(Query::list_workers)) {
      WorkerRecord w;
      w.id = row_text(r["id"]);
      w.host = row_text(r["host"]);
      w.pid = r["pid"].as<int>();
      w.concurrency = r["concurrency"].as<int>();
      for (const auto& f : row_json(r["flows"]))
        w.flows.push_back(FlowKey{f.value("slug", ""), f.value("version", "")});
      w.started_at = from_micros(r["started_at_us"].as<std::int64_t>());
      w.last_heartbeat_at = from_micros(r["last_heartbeat_at_us"].as<std::int64_t>());
      w.stopped_at = opt_time(r["stopped_at_us"]);
      w.state = r["state"].as<std::string>();
      if (!r["heartbeat_ms"].is_null())
        w.heartbeat_interval = Millis(r["heartbeat_ms"].as<std::int64_t>());
      w.heartbeat_age = Millis(std::max<std::int64_t>(0, r["heartbeat_age_ms"].as<std::int64_t>()));
      out.push_back(std::move(w));
    }
    return out;
  });
}

bool RunStore::connection_lost() const noexcept { return impl_ == nullptr || impl_->lost; }

Result<std::vector<TaskId>> RunStore::complete(std::span<const Completion> completions) {
  if (completions.empty()) return std::vector<TaskId>{};
  // As in work(): an output the server refuses fails its task alone, permanently.
  std::vector<Completion> kept;
  std::vector<Failure> refused;
  for (const auto& c : completions) {
    if (auto why = stored_json_problem(c.output, "output")) {
      refused.push_back(refused_failure(c, *why));
    } else {
      kept.push_back(c);
    }
  }
  auto recorded = guarded("completing tasks", [&]() -> Result<std::vector<TaskId>> {
    if (kept.empty()) return std::vector<TaskId>{};
    try {
      return ids_of(impl_->exec(Query::complete, json_text(completions_json(kept))));
    } catch (const pqxx::sql_error& e) {
      if (!refused_class(e) || impl_->lost) throw;
      std::vector<Completion> accepted;
      for (const auto& c : kept) {
        if (auto why = impl_->output_refusal(json_text(c.output))) {
          refused.push_back(refused_failure(c, *why));
        } else {
          accepted.push_back(c);
        }
      }
      if (accepted.size() == kept.size()) throw;
      kept = std::move(accepted);
      if (kept.empty()) return std::vector<TaskId>{};
      return ids_of(impl_->exec(Query::complete, json_text(completions_json(kept))));
    }
  });
  if (!recorded || refused.empty()) return recorded;
  auto failed = fail(refused);
  if (!failed) return tl::unexpected(std::move(failed.error()));
  recorded->insert(recorded->end(), failed->begin(), failed->end());
  std::sort(recorded->begin(), recorded->end());
  return recorded;
}

Result<std::vector<TaskId>> RunStore::fail(std::span<const Failure> failures) {
  if (failures.empty()) return std::vector<TaskId>{};
  const std::string batch = json_text(failures_json(failures));
  return guarded("failing tasks", [&]() -> Result<std::vector<TaskId>> {
    return ids_of(impl_->exec(Query::fail, batch));
  });
}

Result<bool> RunStore::cancel_run(const RunId& run) {
  return guarded(fmt::format("cancelling run {}", shown_name(run)), [&]() -> Result<bool> {
    return impl_->exec(Query::cancel_run, run)[0]["cancelled"].as<bool>();
  });
}

Result<RunId> RunStore::retry_run(const RunId& run) {
  return guarded(fmt::format("retrying run {}", shown_name(run)), [&]() -> Result<RunId> {
    return impl_->exec(Query::retry_run, run)[0]["run_id"].as<std::string>();
  });
}

Result<std::int64_t> RunStore::prune(Millis older_than, int batch) {
  if (batch < 1)
    return make_error(Errc::invalid_argument,
                      fmt::format("pruning runs: the batch is {}; it is at least 1", batch));
  // One cutoff for every batch (the server's clock): the runs ended before it only get fewer.
  auto cutoff = guarded("pruning runs", [&]() -> Result<std::int64_t> {
    return impl_
        ->exec(Query::prune_cutoff, static_cast<std::int64_t>(older_than.count()))[0]["cutoff_us"]
        .as<std::int64_t>();
  });
  if (!cutoff) return cutoff;
  // Each batch starts where the previous one ended, so that the runs not ended that a batch
  // skipped are not read again by the next (see prune.sql).
  std::int64_t total = 0;
  std::string last_slug;
  std::int64_t last_created_us = -1;
  for (;;) {
    const std::string what =
        total == 0
            ? std::string("pruning runs")
            : fmt::format("pruning runs ({} deleted before this batch, and they stay so)", total);
    auto deleted = guarded(what, [&]() -> Result<std::int64_t> {
      const auto row = impl_->exec(Query::prune, *cutoff, batch, last_slug, last_created_us)[0];
      last_slug = row["last_slug"].as<std::string>();
      last_created_us = row["last_created_us"].as<std::int64_t>();
      return row["deleted"].as<std::int64_t>();
    });
    if (!deleted) return deleted;
    total += *deleted;
    if (*deleted < batch) return total;
  }
}

Result<std::optional<RunInfo>> RunStore::get_run(const RunId& run) {
  return guarded(fmt::format("reading run {}", shown_name(run)),
                 [&]() -> Result<std::optional<RunInfo>> {
                   auto rows = impl_->exec(Query::get_run, run);
                   if (rows.empty()) return std::optional<RunInfo>{};
                   return std::optional<RunInfo>(run_of(rows[0]));
                 });
}

Result<std::vector<RunInfo>> RunStore::list_runs(const RunFilter& filter,
                                                 const std::optional<RunId>& before) {
  return guarded("listing runs", [&]() -> Result<std::vector<RunInfo>> {
    const std::string status =
        filter.status ? std::string(to_string(*filter.status)) : std::string();
    auto rows =
        before ? impl_->exec(Query::list_runs_before, filter.flow_slug.value_or(""), status,
                             filter.limit, *before)
               : impl_->exec(Query::list_runs, filter.flow_slug.value_or(""), status, filter.limit);
    std::vector<RunInfo> out;
    out.reserve(rows.size());
    for (const auto& r : rows) out.push_back(run_of(r));
    return out;
  });
}

Result<std::vector<StepInfo>> RunStore::run_steps(const RunId& run) {
  return guarded(fmt::format("reading the steps of run {}", shown_name(run)),
                 [&]() -> Result<std::vector<StepInfo>> {
                   std::vector<StepInfo> out;
                   for (const auto& r : impl_->exec(Query::run_steps, run)) {
                     StepInfo s;
                     s.slug = row_text(r["step_slug"]);
                     s.kind = r["kind"].as<std::string>();
                     s.status = r["status"].as<std::string>();
                     s.task_count = r["task_count"].as<int>();
                     s.attempts = r["attempts"].as<int>();
                     s.started_at = opt_time(r["started_at_us"]);
                     s.finished_at = opt_time(r["finished_at_us"]);
                     s.error = opt_text(r["error"]);
                     s.output = opt_json(r["output"]);
                     s.worker = opt_text(r["worker_id"]);
                     out.push_back(std::move(s));
                   }
                   return out;
                 });
}

// ---------------------------------------------------------------------------------------------
// Listener

namespace {

class QueueingReceiver final : public pqxx::notification_receiver {
 public:
  QueueingReceiver(pqxx::connection_base& conn, const std::string& channel,
                   std::deque<Notification>& queue)
      : pqxx::notification_receiver(conn, channel), queue_(queue) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    queue_.push_back(Notification{channel(), payload});
  }

 private:
  std::deque<Notification>& queue_;
};

}  // namespace

struct Listener::Impl {
  explicit Impl(const std::string& conninfo) : conn(with_connection_defaults(conninfo)) {}
  std::deque<Notification> queue;
  pqxx::connection conn;
  bool lost = false;
  std::vector<std::unique_ptr<QueueingReceiver>> receivers;  // destroyed before conn
};

Listener::Listener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

Result<Listener> Listener::connect(const std::string& conninfo, std::vector<std::string> channels) {
  return guarded("listening for run store notifications", [&]() -> Result<Listener> {
    auto impl = std::make_unique<Impl>(conninfo);
    for (const auto& channel : channels)
      impl->receivers.push_back(
          std::make_unique<QueueingReceiver>(impl->conn, channel, impl->queue));
    impl->conn.get_notifs();  // sends the LISTENs now, so nothing after connect() is missed
    return Listener(std::move(impl));
  });
}

bool Listener::connection_lost() const noexcept { return impl_ == nullptr || impl_->lost; }

Result<std::optional<Notification>> Listener::wait(Millis timeout) {
  auto result = wait_for(timeout);
  if (!result && !impl_->conn.is_open()) impl_->lost = true;
  return result;
}

Result<std::optional<Notification>> Listener::wait_for(Millis timeout) {
  return guarded("waiting for a notification", [&]() -> Result<std::optional<Notification>> {
    auto& q = impl_->queue;
    if (q.empty()) impl_->conn.get_notifs();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (q.empty()) {
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      impl_->conn.await_notification(static_cast<long>(left.count() / 1'000'000),
                                     static_cast<long>(left.count() % 1'000'000));
    }
    if (q.empty()) return std::optional<Notification>{};
    Notification n = std::move(q.front());
    q.pop_front();
    return std::optional<Notification>(std::move(n));
  });
}

}  // namespace flowreg::detail

// ---------------------------------------------------------------------------------------------
// Metrics

namespace flowreg::detail {

// The statement, and how it reads each flow's runs: schemas/queries/scrape_counts.sql.
Result<ScrapeCounts> RunStore::scrape_counts(std::optional<ScrapeWindow> window,
                                             int max_stragglers) {
  return guarded("reading counts for metrics", [&]() -> Result<ScrapeCounts> {
    pqxx::result rows;
    try {
      pqxx::nontransaction tx(impl_->conn);
      Json bounds = Json::object();
      Json stragglers = Json::object();
      if (window) {
        for (const auto& [slug, from_us] : window->live_from_us) bounds[slug] = from_us;
        for (const auto& [slug, ids] : window->stragglers) stragglers[slug] = ids;
      }
      rows = tx.exec_params(std::string(query_sql(Query::scrape_counts)),
                            window ? window->since_us : -1, json_text(bounds),
                            json_text(stragglers), std::max(max_stragglers, 0));
    } catch (const pqxx::broken_connection&) {
      impl_->lost = true;
      throw;
    }
    ScrapeCounts out;
    for (const auto& r : rows) {
      const std::string kind = r["kind"].as<std::string>();
      if (kind == "upto") {
        out.next.since_us = r["at_us"].as<std::int64_t>();
      } else if (kind == "live") {
        out.next.live_from_us[row_text(r["flow_slug"])] = r["at_us"].as<std::int64_t>();
      } else if (kind == "straggler") {
        out.next.stragglers[row_text(r["flow_slug"])].push_back(r["run_id"].as<std::string>());
      } else if (kind == "tasks") {
        out.tasks.push_back({row_text(r["flow_slug"]), r["queued"].as<std::int64_t>(),
                             r["running"].as<std::int64_t>()});
      } else if (auto status = parse_run_status(r["status"].as<std::string>())) {
        out.runs.push_back({row_text(r["flow_slug"]), *status, r["queued"].as<std::int64_t>()});
      }
    }
    return out;
  });
}

}  // namespace flowreg::detail
