// RunStore: what workers record (claims, leases, results, crashed handlers, heartbeats) and the
// ends of runs (cancel, retry, prune).
#include <fmt/format.h>

#include <algorithm>
#include <pqxx/pqxx>

#include "store/queries.hpp"
#include "store/run_store.hpp"
#include "store/run_store_detail.hpp"
#include "util/json_text.hpp"

namespace flowreg::detail {

namespace {

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

// A completion the server cannot store, as the permanent failure recorded in its place.
Failure refused_failure(const Completion& c, std::string_view why) {
  Failure failure{c.id, c.attempt,
                  fmt::format("the database refused the handler's output: {}", why), true};
  failure.process = c.process;
  return failure;
}

// A result's "process" entry, kept with its attempt (schemas/0031_process_facts.sql): [pid,
// cpu_us, max_rss_kb, handler_us], then [signal, exit_status, left_processes] when the process
// ended during the task or the handler left processes (null: none). An array, not an object: it
// is written into the run's row at each completion (pg_column_size: 64 bytes for a typical
// array, 138 for the same values as an object with their keys).
Json process_json(const TaskProcess& p) {
  Json out = Json::array({p.pid, p.cpu_us, p.max_rss_kb, p.handler_us});
  if (p.signal || p.exit_status || p.left_processes > 0) {
    out.push_back(p.signal ? Json(*p.signal) : Json(nullptr));
    out.push_back(p.exit_status ? Json(*p.exit_status) : Json(nullptr));
    out.push_back(p.left_processes);
  }
  return out;
}

Json completions_json(std::span<const Completion> completions) {
  Json batch = Json::array();
  for (const auto& c : completions) {
    batch.push_back({{"id", c.id}, {"attempt", c.attempt}, {"output", c.output}});
    if (c.process) batch.back()["process"] = process_json(*c.process);
  }
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
    if (f.snooze) batch.back()["snooze_ms"] = f.snooze->count();
    if (f.process) batch.back()["process"] = process_json(*f.process);
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
  return guarded(
      fmt::format("recording the heartbeat of worker {}", worker.id), [&]() -> Result<void> {
        const std::int64_t every_ms =
            worker.heartbeat_interval
                ? static_cast<std::int64_t>(worker.heartbeat_interval->count())
                : -1;
        impl_->exec(
            Query::heartbeat, worker.id, worker.host, worker.pid, keys, worker.concurrency, stopped,
            worker.state, every_ms,
            worker.handler_processes ? json_text(*worker.handler_processes) : std::string());
        return {};
      });
}

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

Result<std::int64_t> RunStore::prune_events(Millis older_than, int batch) {
  if (batch < 1)
    return make_error(Errc::invalid_argument,
                      fmt::format("pruning events: the batch is {}; it is at least 1", batch));
  return guarded("pruning events", [&]() -> Result<std::int64_t> {
    const auto cutoff = impl_
                            ->exec(Query::prune_cutoff,
                                   static_cast<std::int64_t>(older_than.count()))[0]["cutoff_us"]
                            .as<std::int64_t>();
    std::int64_t total = 0;
    for (;;) {
      const auto n =
          impl_->exec(Query::prune_events, cutoff, batch)[0]["deleted"].as<std::int64_t>();
      total += n;
      if (n < batch) return total;
    }
  });
}

Result<std::int64_t> RunStore::prune_rate_buckets(int batch) {
  if (batch < 1)
    return make_error(
        Errc::invalid_argument,
        fmt::format("pruning rate buckets: the batch is {}; it is at least 1", batch));
  return guarded("pruning rate buckets", [&]() -> Result<std::int64_t> {
    std::int64_t total = 0;
    std::string flow, scope, key;  // the last bucket read; "" sorts before any
    for (;;) {
      const auto row = impl_->exec(Query::prune_rate_buckets, flow, scope, key, batch)[0];
      total += row["deleted"].as<std::int64_t>();
      if (row["last_flow"].is_null()) return total;
      flow = row["last_flow"].as<std::string>();
      scope = row["last_scope"].as<std::string>();
      key = row["last_key"].as<std::string>();
    }
  });
}

Result<SignalSent> RunStore::send_signal(const RunId& run, std::string_view name, const Json& data,
                                         const std::optional<std::string>& key) {
  return guarded(
      fmt::format("sending signal '{}' to run {}", shown_name(name), shown_name(run)),
      [&]() -> Result<SignalSent> {
        const auto row =
            impl_->exec_once(Query::send_signal, run, std::string(name), json_text(data), key)[0];
        return SignalSent{row["signal_id"].as<std::int64_t>(), row["outcome"].as<std::string>()};
      });
}

Result<EventSent> RunStore::send_event(std::string_view name, const Json& data,
                                       const std::optional<std::string>& key) {
  return guarded(fmt::format("sending event '{}'", shown_name(name)), [&]() -> Result<EventSent> {
    const auto row =
        impl_->exec_once(Query::send_event, std::string(name), json_text(data), key)[0];
    return EventSent{row["event_id"].as<std::int64_t>(), row["resumed"].as<int>(),
                     row["duplicate"].as<bool>()};
  });
}

Result<RunId> RunStore::retry_run(const RunId& run, RetryFrom from) {
  const bool failed_step = from == RetryFrom::failed_step;
  return guarded(
      fmt::format("retrying run {}{}", shown_name(run), failed_step ? " from its failed step" : ""),
      [&]() -> Result<RunId> {
        return impl_
            ->exec(failed_step ? Query::retry_run_from_failed : Query::retry_run, run)[0]["run_id"]
            .as<std::string>();
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

}  // namespace flowreg::detail
