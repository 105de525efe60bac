// RunStore: reads for the CLI, the HTTP API and metrics: runs, their steps, workers, counts.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <pqxx/pqxx>

#include "store/queries.hpp"
#include "store/run_store.hpp"
#include "store/run_store_detail.hpp"
#include "util/json_text.hpp"

namespace flowreg::detail {

namespace {

std::optional<TimePoint> opt_time(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return from_micros(f.as<std::int64_t>());
}

std::optional<std::string> opt_text(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return row_text(f);
}

std::optional<Json> opt_json(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return row_json(f);
}

// The status a list's statement is given: "scheduled" for RunFilter::scheduled (the statements
// read it as started with start_at ahead), the status, or "" for any.
std::string status_param(const RunFilter& filter) {
  if (filter.scheduled) return "scheduled";
  return filter.status ? std::string(to_string(*filter.status)) : std::string();
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
  info.start_at = opt_time(r["start_at_us"]);
  info.scheduled = r["scheduled"].as<bool>();
  if (!r["priority"].is_null()) info.priority = r["priority"].as<int>();
  return info;
}

// A run from get_run.sql's columns: a run's, and its concurrency limits' (migration 0023).
RunInfo run_with_gates_of(const pqxx::row& r) {
  RunInfo info = run_of(r);
  info.held_key = opt_text(r["held_key"]);
  if (!r["gate_key"].is_null()) {
    RunInfo::GateWait w;
    w.step = r["gate_step"].as<std::string>();
    w.key = r["gate_key"].as<std::string>();
    w.limit = r["gate_limit"].as<int>(0);
    w.holding = r["gate_holding"].as<int>(0);
    w.rate_limit = r["rate_limit"].as<int>(0);
    w.rate_per_ms = r["rate_per_ms"].as<std::int64_t>(0);
    w.rate_until = opt_time(r["rate_until_us"]);
    info.waiting = std::move(w);
  }
  if (!r["parent_run_id"].is_null())
    info.parent = RunInfo::Parent{r["parent_run_id"].as<std::string>(),
                                  r["parent_step"].as<std::string>(), r["parent_index"].as<int>(0)};
  if (!r["children"].is_null())
    for (const auto& c : row_json(r["children"]))
      info.children.push_back(RunInfo::ChildRun{
          c.value("id", ""), c.value("flow", ""), c.value("step", ""), c.value("index", 0),
          parse_run_status(c.value("status", "")).value_or(RunStatus::started)});
  info.children_total = r["children_total"].as<int>(0);
  return info;
}

// A summary from the columns of schemas/queries/list_run_summaries.sql.
RunSummary summary_of(const pqxx::row& r) {
  RunSummary info;
  info.id = r["id"].as<std::string>();
  info.flow_slug = r["flow_slug"].as<std::string>();
  info.flow_version = r["flow_version"].as<std::string>();
  info.status = parse_run_status(r["status"].as<std::string>()).value_or(RunStatus::started);
  info.error = opt_text(r["error"]);
  info.input_stored_bytes = r["input_stored_bytes"].as<std::int64_t>(0);
  if (!r["output_stored_bytes"].is_null())
    info.output_stored_bytes = r["output_stored_bytes"].as<std::int64_t>();
  info.created_at = from_micros(r["created_at_us"].as<std::int64_t>());
  info.finished_at = opt_time(r["finished_at_us"]);
  info.retry_of = opt_text(r["retry_of"]);
  info.idempotency_key = opt_text(r["idempotency_key"]);
  info.start_at = opt_time(r["start_at_us"]);
  info.scheduled = r["scheduled"].as<bool>();
  return info;
}

}  // namespace

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
      w.held = r["held"].as<int>();
      if (!r["handler_processes"].is_null()) w.handler_processes = row_json(r["handler_processes"]);
      out.push_back(std::move(w));
    }
    return out;
  });
}

Result<ForgetOutcome> RunStore::forget_worker(std::string_view id) {
  return guarded(
      fmt::format("forgetting worker {}", shown_name(id)), [&]() -> Result<ForgetOutcome> {
        auto rows = impl_->exec(Query::forget_worker, std::string(id));
        if (rows[0]["forgotten"].as<bool>()) return ForgetOutcome::forgotten;
        return rows[0]["known"].as<bool>() ? ForgetOutcome::running : ForgetOutcome::unknown;
      });
}

Result<std::vector<std::string>> RunStore::forget_workers_before(Millis age) {
  return guarded("forgetting workers", [&]() -> Result<std::vector<std::string>> {
    std::vector<std::string> out;
    for (const auto& r :
         impl_->exec(Query::forget_workers_before, static_cast<std::int64_t>(age.count())))
      out.push_back(row_text(r["id"]));
    return out;
  });
}

Result<std::optional<RunInfo>> RunStore::get_run(const RunId& run) {
  return guarded(fmt::format("reading run {}", shown_name(run)),
                 [&]() -> Result<std::optional<RunInfo>> {
                   auto rows = impl_->exec(Query::get_run, run);
                   if (rows.empty()) return std::optional<RunInfo>{};
                   return std::optional<RunInfo>(run_with_gates_of(rows[0]));
                 });
}

Result<std::vector<RunInfo>> RunStore::list_runs(const RunFilter& filter,
                                                 const std::optional<RunId>& before) {
  return guarded("listing runs", [&]() -> Result<std::vector<RunInfo>> {
    const std::string status = status_param(filter);
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

namespace {

// A time bound of a RunFilter as microseconds since the epoch; NULL when it is not set.
std::optional<std::int64_t> micros_of(const std::optional<TimePoint>& t) {
  if (!t) return std::nullopt;
  return std::chrono::duration_cast<std::chrono::microseconds>(t->time_since_epoch()).count();
}

}  // namespace

Result<std::vector<RunSummary>> RunStore::list_run_summaries(
    const RunFilter& filter, const std::optional<RunCursor>& cursor) {
  return guarded("listing runs", [&]() -> Result<std::vector<RunSummary>> {
    const std::string status = status_param(filter);
    const bool newer = cursor && cursor->newer;
    auto rows = impl_->exec(newer ? Query::list_run_summaries_newer : Query::list_run_summaries,
                            filter.flow_slug.value_or(""), status, filter.limit,
                            cursor ? cursor->id : std::string(), micros_of(filter.since),
                            micros_of(filter.until), filter.input_text.value_or(""));
    std::vector<RunSummary> out;
    out.reserve(rows.size());
    for (const auto& r : rows) out.push_back(summary_of(r));
    if (newer) std::reverse(out.begin(), out.end());  // read oldest first
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
                     s.waits_until = opt_time(r["waits_until_us"]);
                     s.snoozes = r["snoozes"].as<int>();
                     s.waits_for = opt_json(r["waits_for"]);
                     out.push_back(std::move(s));
                   }
                   return out;
                 });
}

Result<std::optional<RunGraph>> RunStore::run_graph(const RunId& run) {
  return guarded(fmt::format("reading the DAG of run {}", shown_name(run)),
                 [&]() -> Result<std::optional<RunGraph>> {
                   const auto rows = impl_->exec(Query::run_graph, run);
                   if (rows.empty()) return std::nullopt;
                   RunGraph graph;
                   graph.flow_slug = row_text(rows[0]["flow_slug"]);
                   for (const auto& r : rows) {
                     if (r["step_slug"].is_null()) continue;  // no stored steps
                     GraphStep s;
                     s.slug = row_text(r["step_slug"]);
                     s.kind = row_text(r["kind"]);
                     s.handler = row_text(r["handler"]);
                     if (!r["child_flow"].is_null()) s.child_flow = row_text(r["child_flow"]);
                     for (const auto& d : row_json(r["deps"]))
                       if (d.is_string()) s.depends_on.push_back(d.get<std::string>());
                     graph.steps.push_back(std::move(s));
                   }
                   return graph;
                 });
}

Result<std::vector<TaskRow>> RunStore::step_tasks(const RunId& run, std::string_view step,
                                                  int from_index, int limit) {
  return guarded(
      fmt::format("reading the tasks of step {} of run {}", shown_name(step), shown_name(run)),
      [&]() -> Result<std::vector<TaskRow>> {
        std::vector<TaskRow> out;
        for (const auto& r :
             impl_->exec(Query::step_tasks, run, std::string(step), from_index, limit)) {
          TaskRow t;
          t.index = r["task_index"].as<int>();
          t.status = row_text(r["status"]);
          t.attempt = r["attempt"].as<int>();
          t.worker = opt_text(r["worker_id"]);
          t.error = opt_text(r["error"]);
          t.started_at = opt_time(r["started_at_us"]);
          t.finished_at = opt_time(r["finished_at_us"]);
          t.available_at = from_micros(r["available_at_us"].as<std::int64_t>());
          out.push_back(std::move(t));
        }
        return out;
      });
}

Result<std::vector<StepRetry>> RunStore::step_retries(const RunId& run) {
  return guarded(fmt::format("reading the retries of run {}", shown_name(run)),
                 [&]() -> Result<std::vector<StepRetry>> {
                   std::vector<StepRetry> out;
                   for (const auto& r : impl_->exec(Query::step_retries, run)) {
                     StepRetry s;
                     s.step_slug = row_text(r["step_slug"]);
                     s.failed_attempt = r["attempt"].as<int>();
                     s.error = row_text(r["error"]);
                     s.next_attempt_at = from_micros(r["next_attempt_at_us"].as<std::int64_t>());
                     out.push_back(std::move(s));
                   }
                   return out;
                 });
}

namespace {

// An attempt's `process` (migration 0031), as its worker sent it: [pid, cpu_us, max_rss_kb,
// handler_us, signal, exit_status, left_processes], the last three optional. Each value read as a
// number, cut to a whole one and held to its range (0 to the largest; a signal or an exit status
// 0 to 255); one that is not a number reads as 0 (a signal or an exit status: none). None unless
// it is an array whose pid is 1 or more.
std::optional<TaskProcess> task_process_of(const char* text) {
  const auto value = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!value.is_array()) return std::nullopt;
  const auto count = [&](std::size_t at, double top) -> std::optional<std::int64_t> {
    if (at >= value.size() || !value[at].is_number()) return std::nullopt;
    const double n = std::trunc(value[at].get<double>());
    return static_cast<std::int64_t>(std::clamp(n, 0.0, top));
  };
  constexpr double kInt = 2147483647.0;
  constexpr double kBig = 4611686018427387904.0;  // 2^62
  TaskProcess p;
  p.pid = count(0, kInt).value_or(0);
  if (p.pid < 1) return std::nullopt;
  p.cpu_us = count(1, kBig).value_or(0);
  p.max_rss_kb = count(2, kBig).value_or(0);
  p.handler_us = count(3, kBig).value_or(0);
  if (const auto s = count(4, 255)) p.signal = static_cast<int>(*s);
  if (const auto s = count(5, 255)) p.exit_status = static_cast<int>(*s);
  p.left_processes = count(6, kInt).value_or(0);
  return p;
}

}  // namespace

Result<AttemptPage> RunStore::task_attempts(const RunId& run, const std::string& step, int limit,
                                            int offset) {
  return guarded(
      fmt::format("reading the attempts of run {}", shown_name(run)), [&]() -> Result<AttemptPage> {
        AttemptPage page;
        for (const auto& r : impl_->exec(Query::task_attempts, run, step, limit, offset)) {
          AttemptRecord a;
          a.step_slug = row_text(r["step_slug"]);
          a.task_index = r["task_index"].as<int>();
          a.attempt = r["attempt"].as<int>();
          a.outcome = r["outcome"].as<std::string>();
          a.worker = opt_text(r["worker_id"]);
          a.started_at = opt_time(r["started_at_us"]);
          a.finished_at = opt_time(r["finished_at_us"]);
          a.error = opt_text(r["error"]);
          if (!r["process"].is_null()) a.process = task_process_of(r["process"].c_str());
          page.total = r["total"].as<std::int64_t>();
          page.attempts.push_back(std::move(a));
        }
        // A page past the end counts them all the same.
        if (page.attempts.empty() && offset > 0)
          for (const auto& r : impl_->exec(Query::task_attempts, run, step, 1, 0))
            page.total = r["total"].as<std::int64_t>();
        return page;
      });
}

Result<std::vector<RunSummary>> RunStore::find_run_summaries(const RunFilter& filter,
                                                             const RunSearch& search) {
  return guarded("searching runs", [&]() -> Result<std::vector<RunSummary>> {
    const std::string status = status_param(filter);
    auto rows = impl_->exec(Query::find_run_summaries, search.id.value_or(""),
                            search.idempotency_key.value_or(""), filter.flow_slug.value_or(""),
                            status, filter.limit);
    std::vector<RunSummary> out;
    out.reserve(rows.size());
    for (const auto& r : rows) out.push_back(summary_of(r));
    return out;
  });
}

Result<std::int64_t> RunStore::count_runs(const RunFilter& filter, int at_most) {
  return guarded("counting runs", [&]() -> Result<std::int64_t> {
    const std::string status = status_param(filter);
    auto rows = impl_->exec(Query::count_runs, filter.flow_slug.value_or(""), status, at_most,
                            micros_of(filter.since), micros_of(filter.until),
                            filter.input_text.value_or(""));
    return rows[0]["n"].as<std::int64_t>();
  });
}

// ---------------------------------------------------------------------------------------------
// Metrics

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
                             r["running"].as<std::int64_t>(), r["at_us"].as<std::int64_t>()});
      } else if (auto status = parse_run_status(r["status"].as<std::string>())) {
        out.runs.push_back({row_text(r["flow_slug"]), *status, r["queued"].as<std::int64_t>()});
      }
    }
    return out;
  });
}

}  // namespace flowreg::detail
