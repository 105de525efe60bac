#pragma once
// The statements RunStore sends, one file each in schemas/queries/<name>.sql, compiled into the
// library (core/src/store/store.cmake generates builtin_queries() from them). Unlike the
// migrations and the function files, they are not applied to the database, so they carry no
// checksum: editing one changes what the next build sends.
//
// A statement is named by a Query, so that a misspelled name does not compile. The list below and
// the files must match one to one: the generated source fails to compile when a file has no
// Query, a Query has no file, or a file is empty, and -Wswitch (an error with FLOWREG_WERROR)
// names a Query added after the last without a file. Adding a statement: a file in
// schemas/queries/ and its name here, in the byte order of the file names (LC_ALL=C ls), with
// kQueryCount counted from the last one.
//
// The prepared statements of a RunStore connection are named after their file (query_name).

#include <cstddef>
#include <span>
#include <string_view>

namespace flowreg::detail {

enum class Query {
  cancel_run,
  claim,
  complete,
  count_runs,
  delay_starts,
  fail,
  find_run_summaries,
  forget_worker,
  forget_workers_before,
  get_run,
  health_holders,
  health_tables,
  heartbeat,
  list_run_summaries,
  list_run_summaries_newer,
  list_runs,
  list_runs_before,
  list_workers,
  prioritize_runs,
  probe_output,
  prune,
  prune_cutoff,
  prune_events,
  prune_rate_buckets,
  release,
  renew,
  report_crashes,
  retain,
  retention_floors,
  retention_lock,
  retention_record,
  retention_state,
  retention_unlock,
  retry_run,
  retry_run_from_failed,
  run_graph,
  run_steps,
  same_input,
  schedule_delete,
  schedule_list,
  schedule_metrics,
  schedule_pause,
  schedule_trigger,
  schedule_upsert,
  schedules_due,
  schedules_fire,
  schedules_retire,
  scrape_counts,
  send_event,
  send_signal,
  session_settings,
  start_copying,
  start_run,
  start_run_with,
  start_runs,
  step_retries,
  step_tasks,
  task_attempts,
  upsert_flow,
  work,
};
inline constexpr std::size_t kQueryCount = static_cast<std::size_t>(Query::work) + 1;

// One file of schemas/queries/.
struct QueryFile {
  Query query;
  const char* name;      // the file name without ".sql" (NUL-terminated, as libpqxx wants it)
  std::string_view sql;  // the file's text, comments included
};

// The files of schemas/queries/, in Query order (builtin_queries()[q] is the file of q).
std::span<const QueryFile> builtin_queries() noexcept;

inline const QueryFile& query_file(Query q) noexcept {
  return builtin_queries()[static_cast<std::size_t>(q)];
}
inline const char* query_name(Query q) noexcept { return query_file(q).name; }
inline std::string_view query_sql(Query q) noexcept { return query_file(q).sql; }

}  // namespace flowreg::detail
