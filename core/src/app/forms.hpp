#pragma once
// The documented forms of what flowreg shows, the same for every front end: the JSON of a flow, a
// run, a step, a plugin file and a worker (the CLI's --json output, the HTTP API's bodies and the
// dashboard's data), and how text from outside is made fit for them.
//
// Thread-safety: free functions over values; safe from any thread.

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "flowreg/flow_registry.hpp"
#include "flowreg/options.hpp"
#include "flowreg/plugins.hpp"
#include "store/run_store.hpp"

namespace flowreg::app {

// Keys in the order the documented forms list them.
using json = nlohmann::ordered_json;

// A file name, a path or other text from outside, for JSON: invalid UTF-8 replaced.
std::string valid_text(std::string_view raw);

// A time as ISO 8601 in UTC to the second ("2026-01-02T03:04:05Z").
std::string iso_time(const detail::TimePoint& t);
// A time given by a user (a list's since/until): "2026-01-02T03:04:05Z" with optional fraction
// and a "Z" or "+HH:MM"/"-HH:MM" offset (none: UTC), "2026-01-02T03:04" (a browser's
// datetime-local, taken as UTC), "2026-01-02" (its midnight, UTC), or a duration before `now`
// ("90m", "2h", "168h": parse_duration's forms). nullopt when it is none of those.
std::optional<detail::TimePoint> parse_time(std::string_view text, detail::TimePoint now);
// A stored JSON value with its keys in a stable order.
json to_ordered(const nlohmann::json& j);

// A run's status as shown: "scheduled" for a delayed run whose time is still ahead (migration
// 0020), else its stored status.
std::string run_status(detail::RunStatus status, bool scheduled);
// A run: {id, flow, version, status, input, output, error, created_at, finished_at, retry_of,
// start_at}; start_at: a delayed start's time, else null.
json run_json(const detail::RunInfo& r);
// Why a started run's task waits (concurrency limits, migration 0023), as one line: "concurrency
// limit 2 reached for key \"42\"" (step 'charge': ...); "" when none of its tasks waits for one.
std::string waiting_text(const detail::RunInfo& r);
// A concurrency limit as flows show it: "concurrency=2 per /customer_id", "concurrency=2".
std::string concurrency_text(const Concurrency& c);
// A rate limit as flows show it: "rate_limit=100 per 1s per /region", "rate_limit=5 per 1m".
std::string rate_limit_text(const RateLimit& r);
// {"limit", "per" (a duration: "1s"), "key" (when set)}, as the API gives a rate limit.
json rate_limit_json(const RateLimit& r);
// A flow's own retention (the ages it sets): "retention completed=keep failed=90d"; "" for none.
std::string retention_text(const Retention& r);
// {completed, failed, cancelled}: "7d", "keep", or null (the worker's default); null for none.
json retention_json(const Retention& r);
// The slot a run holds under its flow's concurrency limit: "holds a slot of key \"42\"", or "".
std::string held_text(const detail::RunInfo& r);
// A run in a list: {id, flow, version, status, error, created_at, finished_at, duration_ms,
// retry_of, idempotency_key, input_stored_bytes, output_stored_bytes, start_at}; no input or output
// (GET /api/v1/runs/{id} has them). The error is an excerpt of at most kErrorExcerptBytes bytes.
inline constexpr std::size_t kErrorExcerptBytes = 300;
json run_summary_json(const detail::RunSummary& r);
// `text` made valid UTF-8 and, when longer than `max_bytes`, its first characters that fit in
// `max_bytes` followed by "…".
std::string excerpt(std::string_view text, std::size_t max_bytes);
// A step of a run: {slug, kind, status, tasks, attempts, worker, started_at, finished_at, error,
// output}.
json step_json(const detail::StepInfo& s);
// A sleep step's sleep: {"duration": "3d"} or {"until": "/pointer"}; "sleep 3d" or "sleep until
// the time at /pointer of its input".
json sleep_json(const Sleep& s);
std::string sleep_text(const Sleep& s);
// A wait step's wait: {"signal"} or {"event", "match"}, with "timeout" and "default" (null when
// unset); "wait for signal 'approve', failing after 2d", "wait for event 'paid' where /id = /o/id".
json wait_json(const Wait& w);
std::string wait_text(const Wait& w);
// A step's condition and trigger for `flows show` ("  when /charge/ok equals true  (trigger
// any)"); "" for a step without either.
std::string condition_suffix(const StepDef& s);
// A flow step's child flow, as `flows show` and the flow page say it: "starts flow receipt" (with
// map: "... per element").
std::string child_text(const Child& c);
// A run's parent and children (migration 0028) as run_json gives them.
json run_parent_json(const detail::RunInfo& r);
json run_children_json(const detail::RunInfo& r);
// What a waiting step of a run waits for (StepInfo::waits_for): "signal 'approve'", "event 'paid'
// where /order_id = 42", or "".
std::string waits_for_text(const json& waits_for);
// What a step waits for, when a task of it is queued for later ("sleeping until 2026-…Z",
// "snoozed (2x) until …", "next attempt at …") or it is a waiting wait step ("waiting for signal
// 'approve', times out at …"), or "" (docs/flows.md#sleep-steps, #wait-steps).
std::string step_wait_text(const detail::StepInfo& s);
// A time as ISO 8601 in UTC to the millisecond ("2026-01-02T03:04:05.678Z").
std::string iso_time_ms(const detail::TimePoint& t);
// An attempt of a task: {step, task, attempt, outcome, worker, started_at, finished_at,
// duration_ms, error}; times to the millisecond, the error an excerpt of at most
// kAttemptErrorBytes bytes.
inline constexpr std::size_t kAttemptErrorBytes = 1000;
json attempt_json(const detail::AttemptRecord& a);
// What an attempt cost in its handler process (attempt_json's "process"), and that as one line
// for people ("" when `process` is not an object).
json task_process_json(const detail::TaskProcess& p);
std::string task_process_text(const json& process);
// A flow: {slug, module, version, description, source, options, input_schema, steps}, and its
// options {max_attempts, base_delay, max_delay, timeout}.
json flow_json(const RegisteredFlow& registered);
json options_json(const Options& o);
// A file of the plugins directory: {file, module, sha256, abi, fingerprint, status, error, flows,
// handlers}; its error as text ("[stage] message") and as {stage, message}.
json plugin_json(const PluginInfo& p);
std::string plugin_error_text(const PluginError& error);
json plugin_error_json(const PluginError& error);
// A worker and its status from its heartbeat's age: running, stuck, replacing, stale or stopped.
std::string worker_status(const detail::WorkerRecord& w);
json worker_json(const detail::WorkerRecord& w);
// worker_json's "handler_processes" in words ("2 alive (1 busy); 5 started, 1 crashed, 1 timed
// out, 0 killed by a limit, 0 broken"); "" for null.
std::string handler_processes_text(const json& processes);

}  // namespace flowreg::app
