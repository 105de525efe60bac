#pragma once
// The run store: flow versions, runs, steps and tasks in PostgreSQL (the tables of schemas/*.sql,
// the functions of schemas/functions/), and the lifecycle API that workers drive (claim, renew,
// complete, fail) and the CLI reads.
//
// Cost model: every call below is ONE statement sent in autocommit (a plpgsql function of schema
// flowreg): one round trip and one transaction, whatever the batch size. Batch claims and
// completions: a transaction's fixed cost (round trip, commit, WAL flush) is shared by the batch.
// A statement the server aborts with a deadlock (SQLSTATE 40P01) or a serialization failure
// (40001) changed nothing: it is sent again, up to kTransientRetries times in all, before its
// error is returned.
//
// Refused results: a completion whose output the server cannot store fails its task alone,
// permanently, with the reason; the rest of its batch is recorded (work() and complete()).
//
// Semantics: a step is ready when all its dependencies
// completed; a root step gets the run input, a dependent step {dep_slug: output, ...}, a map step
// one task per element of its array input (root: the run input; dependent: its single
// dependency's output), [] at once for an empty array, and the run fails when the input is not
// an array. A claimed task is leased for its step's timeout; an expired lease makes it claimable
// again (the next claim of its flow requeues it). Completions and failures are fenced by attempt
// number. Retry n (1 = first) waits min(max_delay, base_delay * 2^(n-1) * J), J uniform in
// [0.8, 1.2]. The database must be migrated (detail::migrate) before use.
//
// Notifications: channel kTasksChannel (payload: the flow slug) when tasks become ready; channel
// kRunsChannel (payload: "<run id> <status>") when a run starts and when it ends (completed,
// failed, cancelled). Listener waits for them.
//
// Thread-safety: a RunStore owns one connection and is NOT safe for concurrent use: give each
// thread its own (they may share a database; the SQL is safe under any concurrency). Movable, not
// copyable. The same for Listener.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/options.hpp"
#include "flowreg/schedule.hpp"

namespace flowreg::detail {

using Json = nlohmann::json;
using TimePoint = std::chrono::system_clock::time_point;
using RunId = std::string;    // a UUID in its text form
using TaskId = std::int64_t;  // tasks.id

inline constexpr std::string_view kTasksChannel = "flowreg_tasks";
// The deepest nesting of a task output the store sends to the server (PostgreSQL's jsonb parser
// recurses once per level and refuses values deeper than its stack allows).
inline constexpr std::size_t kMaxStoredDepth = 5000;
// From this many inputs on, RunStore::start_runs writes the runs of a flow of one single step by
// COPY: about 90 bytes less WAL per run, for four more round trips per call (see start_runs).
inline constexpr std::size_t kCopiedStartMin = 64;
// How many times in all a statement aborted by a deadlock or a serialization failure is sent.
inline constexpr int kTransientRetries = 5;

// Why the server would refuse `value` as jsonb: a string or key holding U+0000, or nesting deeper
// than kMaxStoredDepth; nullopt when neither. `what` names the value in the reason ("output",
// "input"). Never recurses.
std::optional<std::string> stored_json_problem(const Json& value, std::string_view what);
inline constexpr std::string_view kRunsChannel = "flowreg_runs";

enum class RunStatus { started, completed, failed, cancelled };
std::string_view to_string(RunStatus status) noexcept;
std::optional<RunStatus> parse_run_status(std::string_view text) noexcept;

// A flow version a worker serves.
struct FlowKey {
  std::string slug;
  std::string version;
};

struct StartOptions {
  // A second start of the same flow slug with the same key and the same input (compared as
  // jsonb) returns the first run; with another input it is refused (Errc::invalid_argument, a
  // message showing both inputs, or their digests when large).
  std::optional<std::string> idempotency_key;
  std::optional<RunId> retry_of;  // lineage: the run this one retries
  // A delayed start (migration 0020): the run is created now and its first tasks become claimable
  // at this time (runs.start_at, tasks.available_at, in the start's transaction). nullopt: at once.
  // A run returned for a repeated idempotency key keeps its own time.
  std::optional<TimePoint> start_at;
  // The run's own priority (migration 0022), which its tasks take instead of their steps'
  // (Options::priority): claimed highest first. nullopt: its steps'. A run returned for a
  // repeated idempotency key keeps its own.
  std::optional<int> priority;
};

// Where a retry of a run starts: its first steps (a new run of the whole flow), or the step it
// failed at (its completed steps' outputs kept: retry_run_from_failed, schemas/functions/).
enum class RetryFrom { start, failed_step };

struct ClaimedTask {
  TaskId id = 0;
  RunId run_id;
  std::string flow_slug, flow_version, step_slug;
  int task_index = 0;  // the element's index for a map step, else 0
  int attempt = 0;     // 1 for the first attempt; pass it back to complete/fail/renew (fencing)
  Json input;
  int max_attempts = 0;
  Millis timeout{0};  // the step's timeout: the worker gives up on the handler after it
  TimePoint lease_expires_at;
};

struct TaskAttempt {
  TaskId id = 0;
  int attempt = 0;
};

// What one attempt run in a handler process cost (isolation: process; migration 0031): the
// process, the CPU time the task took, the process's peak resident set so far, how long the
// handler ran (measured in the process), and, when the process ended during the task, its signal
// or exit status and the processes the handler left running (killed with it).
struct TaskProcess {
  std::int64_t pid = 0;
  std::int64_t cpu_us = 0;
  std::int64_t max_rss_kb = 0;
  std::int64_t handler_us = 0;
  std::optional<int> signal;
  std::optional<int> exit_status;
  std::int64_t left_processes = 0;
};

struct Completion {
  TaskId id = 0;
  int attempt = 0;
  Json output;
  std::size_t bytes = 0;  // the output's size as JSON text, when known (batches are cut by it)
  std::optional<TaskProcess> process = std::nullopt;  // kept with the attempt (migration 0031)
};

struct Failure {
  TaskId id = 0;
  int attempt = 0;
  std::string error;
  bool permanent = false;  // fail the step and run at once, whatever the attempts left
  // Not a failure: the handler snoozed its task (flowreg::sdk::snooze), which is queued again
  // this much later without spending its attempt (migration 0025); `error` is unused.
  std::optional<Millis> snooze = std::nullopt;
  std::optional<TaskProcess> process = std::nullopt;  // kept with the attempt (migration 0031)
};

// A task a worker gives back on shutdown. ran = false: its handler never started (the attempt is
// refunded); true: the handler was interrupted (handled like an expired lease, at once).
struct Release {
  TaskId id = 0;
  int attempt = 0;
  bool ran = false;
};

// What one worker cycle (RunStore::work) returns.
struct WorkResult {
  std::vector<ClaimedTask> claimed;
  std::vector<TaskId> rejected;  // completions and failures not recorded
  // Completions whose output the database cannot store (a string holding U+0000, nesting deeper
  // than kMaxStoredDepth, or any other value the server refuses): each was recorded as a permanent
  // failure of its task with the reason, and the rest of the batch as given. Not in `rejected`.
  std::vector<TaskId> refused;
  // Claimed tasks that cannot be run: a row the claim could not fill (the task's step or run was
  // deleted under flowreg's guards) or an input that is not JSON. Each was recorded as a permanent
  // failure of its task with the reason; they are not in `claimed`.
  std::vector<TaskId> unusable;
  // How long until the next delayed task (a retry waiting for its backoff) of the flows becomes
  // ready, by the server's clock; nullopt when none waits.
  std::optional<Millis> next_due_in;
};

// A row of flowreg.workers.
struct WorkerRecord {
  std::string id, host;
  int pid = 0;
  int concurrency = 0;
  std::vector<FlowKey> flows;
  TimePoint started_at, last_heartbeat_at;
  std::optional<TimePoint> stopped_at;
  // What the worker said of itself: "running", or "stuck" (every handler thread is held by a
  // handler that timed out: it claims nothing).
  std::string state = "running";
  std::optional<Millis> heartbeat_interval;  // as the worker reported it (nullopt: not reported)
  Millis heartbeat_age{0};  // now - last_heartbeat_at, by the server's clock (list_workers)
  int held = 0;             // tasks it holds now: started, under its lease (list_workers)
  // Its pools of handler processes (isolation: process), summed: {"alive", "busy", "started",
  // "crashed", "timed_out", "killed_by_limit", "broken"}; nullopt when it has none.
  std::optional<Json> handler_processes;
};

// What RunStore::forget_worker did.
enum class ForgetOutcome { forgotten, running, unknown };

// A task that was running in a worker that died, from that worker's crash journal.
struct CrashReport {
  TaskId id = 0;
  int attempt = 0;
  std::optional<int> signal;  // the fatal signal attributed to its handler, when one was recorded
};

// What report_crashes() did with each report.
struct CrashOutcome {
  TaskId id = 0;
  enum class Kind { failed, counted, stale } kind = Kind::stale;
};

struct RunInfo {
  RunId id;
  std::string flow_slug, flow_version;
  RunStatus status = RunStatus::started;
  Json input;
  std::optional<Json> output;
  std::optional<std::string> error;
  TimePoint created_at;
  std::optional<TimePoint> finished_at;
  std::optional<RunId> retry_of;
  std::optional<std::string> idempotency_key;
  // A delayed start's time (StartOptions::start_at); scheduled: the run is started and that time
  // is still ahead by the server's clock (none of its tasks can have been claimed): it shows as
  // status "scheduled".
  std::optional<TimePoint> start_at;
  bool scheduled = false;
  // The priority it was started with (StartOptions::priority); nullopt: its steps'.
  std::optional<int> priority;
  // Concurrency limits (migration 0023), read by get_run only. held_key: the key of its flow's
  // limit whose slot the run holds (from the claim of its first task to its end). waiting: a task
  // of it queued behind a limit.
  struct GateWait {
    std::string step;  // "" for its flow's limit
    std::string key;
    int limit = 0;    // 0: no concurrency limit (a rate limit only)
    int holding = 0;  // the runs (a flow's limit) or tasks (a step's) holding the key's slots
    // The rate limit over the task (migration 0024): 0 for none; rate_until, when its bucket
    // has a token again, set while it has none.
    int rate_limit = 0;
    std::int64_t rate_per_ms = 0;
    std::optional<TimePoint> rate_until;
    friend bool operator==(const GateWait&, const GateWait&) = default;
  };
  std::optional<std::string> held_key;
  std::optional<GateWait> waiting;
  // Child flows (migration 0028), read by get_run only. parent: the run whose flow step started
  // it, that step, and its element (0 without map). children: the child runs it started, by step
  // and element, the first kMaxChildrenShown of children_total.
  static constexpr int kMaxChildrenShown = 100;
  struct Parent {
    RunId run;
    std::string step;
    int index = 0;
    friend bool operator==(const Parent&, const Parent&) = default;
  };
  struct ChildRun {
    RunId id;
    std::string flow, step;
    int index = 0;
    RunStatus status = RunStatus::started;
    friend bool operator==(const ChildRun&, const ChildRun&) = default;
  };
  std::optional<Parent> parent;
  std::vector<ChildRun> children;
  int children_total = 0;
};

// A run as lists show it: a RunInfo without its input and output, which a list never reads (they
// may be megabytes each), and its error cut to its first 400 characters.
struct RunSummary {
  RunId id;
  std::string flow_slug, flow_version;
  RunStatus status = RunStatus::started;
  std::optional<std::string> error;  // at most 400 characters: an excerpt when longer
  // The bytes the input and the output take in the table (compressed when PostgreSQL compressed
  // them; not the length of their JSON text), read from their headers alone; none without output.
  std::int64_t input_stored_bytes = 0;
  std::optional<std::int64_t> output_stored_bytes;
  TimePoint created_at;
  std::optional<TimePoint> finished_at;
  std::optional<RunId> retry_of;
  std::optional<std::string> idempotency_key;
  // A delayed start's time (StartOptions::start_at); scheduled: the run is started and that time
  // is still ahead by the server's clock (none of its tasks can have been claimed): it shows as
  // status "scheduled".
  std::optional<TimePoint> start_at;
  bool scheduled = false;
};

struct StepInfo {
  std::string slug;
  std::string kind;    // "single" | "map" | "sleep" | "wait"
  std::string status;  // created | started | completed | failed | cancelled
  int task_count = 0;
  int attempts = 0;  // attempts begun, summed over the step's tasks
  // The worker that recorded the last result (completion or final failure) of one of its tasks;
  // none before one was recorded, or for results recorded before migration 0009.
  std::optional<std::string> worker;
  std::optional<TimePoint> started_at, finished_at;
  std::optional<std::string> error;
  std::optional<Json> output;
  // When its task queued for later becomes available: a sleep step's end, a snoozed task's or a
  // retry's next attempt (migration 0025); none when no task of it waits for a time.
  std::optional<TimePoint> waits_until;
  int snoozes = 0;  // times its tasks were snoozed (flowreg::sdk::snooze)
  // A wait step's (migration 0026): {"signal": name} or {"event": name, "match": {pointer:
  // value}} (the values once it waits, else null); none for other kinds.
  std::optional<Json> waits_for;
};

// What became of a signal sent (RunStore::send_signal).
struct SignalSent {
  std::int64_t id = 0;
  std::string outcome;  // "delivered" | "kept" (its step has not started) | "duplicate"
};

// What an event sent did (RunStore::send_event).
struct EventSent {
  std::int64_t id = 0;
  int resumed = 0;         // wait steps it ended
  bool duplicate = false;  // its key was sent before: that event's id and count
};

// A step of a run's flow version as it was stored (RunStore::run_graph).
struct GraphStep {
  std::string slug, kind, handler;
  std::string child_flow;  // a flow step's (migration 0028), else ""
  std::vector<std::string> depends_on;
};

// A stored schedule (RunStore::list_schedules): its definition and where it stands.
struct ScheduleRecord {
  ScheduleDef def;
  std::string source;  // "config:<module>" (declared in a file) or "api" (created at run time)
  bool paused = false;
  std::optional<TimePoint> next_fire_at;  // its next tick not fired yet (past: due)
  std::optional<TimePoint> last_tick_at, last_fired_at;
  std::optional<RunId> last_run_id;
  std::optional<std::string> last_run_status;  // started | completed | failed | cancelled
  std::optional<std::string> last_outcome;     // started | skipped … | waiting … | error: …
  std::int64_t fired = 0, skipped = 0;
  TimePoint created_at, updated_at;
  bool flow_stored = false;  // a version of its flow is stored (some worker or front end loaded it)
};

// What RunStore::due_schedules read: the due schedules of some flows, the server's now, and the
// earliest next tick of theirs that is not due yet.
struct DueSchedules {
  struct Due {
    ScheduleDef def;
    TimePoint next_fire_at;
  };
  std::vector<Due> due;
  TimePoint now;
  std::optional<TimePoint> next;
};

// One firing of a due schedule (RunStore::fire_schedules, schemas/functions/fire_schedules.sql).
struct ScheduleFiring {
  std::string name;
  TimePoint expected;   // the next_fire_at it was read with
  std::string version;  // the flow version its runs start on
  std::vector<TimePoint> ticks;
  std::vector<Json> inputs;  // one per tick
  std::optional<TimePoint> next;
  int missed = 0;                    // ticks dropped by the catch-up policy
  std::optional<std::string> error;  // none can start: recorded, and the schedule advances
  // None is to start, by policy (catch_up: none, every tick too late): recorded as skipped, and
  // the schedule advances.
  std::optional<std::string> skip;
};

struct ScheduleFired {
  std::string name;
  std::string outcome;  // started | skipped | waiting | error | gone
  int started = 0;      // runs started
};

// The schedules' gauges (RunStore::schedule_gauges, schemas/queries/schedule_metrics.sql).
struct ScheduleGauges {
  std::int64_t scheduled = 0, due = 0, paused = 0;
  struct Next {
    std::string name;
    TimePoint next_fire_at;
    std::optional<double> last_lag_seconds;  // tick -> commit of its last run started by a tick
  };
  std::vector<Next> earliest;  // the unpaused schedules with the earliest next tick, earliest first
};

// A run's DAG (RunStore::run_graph): its flow and its version's steps as stored.
struct RunGraph {
  std::string flow_slug;
  std::vector<GraphStep> steps;
};

// A task the queue still holds (RunStore::step_tasks): queued, started, or a map step's completed
// task while its step runs. Finished tasks leave the table (migration 0009).
struct TaskRow {
  int index = 0;
  std::string status;  // queued | started | completed
  int attempt = 0;     // attempts begun
  std::optional<std::string> worker;
  std::optional<std::string> error;  // the last failed attempt's: at most 400 characters
  std::optional<TimePoint> started_at, finished_at;
  TimePoint available_at;  // when it is (was) claimable: a retry's next attempt
};

// A step's task waiting for its next attempt after one failed (the first due, for a map step).
struct StepRetry {
  std::string step_slug;
  int failed_attempt = 0;  // the number of the attempt that failed
  std::string error;       // its error: at most 400 characters, an excerpt when longer
  TimePoint next_attempt_at;
};

// One attempt of one of a run's tasks (RunStore::task_attempts). outcome: retried (failed, queued
// again), failed (for good), lease_expired, crashed (its worker crashed), interrupted (its worker
// shut down), running, completed. No start for a completing attempt whose task has left the queue,
// nor a worker or end for a map step's (see schemas/queries/task_attempts.sql).
struct AttemptRecord {
  std::string step_slug;
  int task_index = 0;
  int attempt = 0;
  std::string outcome;
  std::optional<std::string> worker;
  std::optional<TimePoint> started_at, finished_at;
  std::optional<std::string> error;    // at most 1,000 characters: an excerpt when longer
  std::optional<TaskProcess> process;  // when it ran in a handler process (migration 0031)
};

// A page of a run's attempts, and how many there are in all.
struct AttemptPage {
  std::vector<AttemptRecord> attempts;
  std::int64_t total = 0;
};

struct RunFilter {
  std::optional<std::string> flow_slug;
  std::optional<RunStatus> status;
  int limit = 100;
  // Only the runs still scheduled (a delayed start whose time is ahead: stored as started); with
  // it, `status` is not used.
  bool scheduled = false;
  // Created at or after `since` and before `until` (list_run_summaries and count_runs only).
  std::optional<TimePoint> since{}, until{};
  // Runs whose input holds this text, ASCII letters in any case (list_run_summaries and count_runs
  // only): searched among the newest kTextSearchScan runs of each flow that pass the other filters,
  // in inputs of at most kTextSearchInputBytes as stored (schemas/queries/list_run_summaries.sql).
  std::optional<std::string> input_text{};
  static constexpr int kTextSearchScan = 10'000;
  static constexpr int kTextSearchInputBytes = 16 * 1024;
};

// Where a page of a list of runs starts: after the run `id` in the list's order (older runs), or,
// `newer`, before it (the runs listed above it).
struct RunCursor {
  RunId id;
  bool newer = false;
};

// Runs searched for by id or by idempotency key (either or both; at least one), within a filter.
struct RunSearch {
  std::optional<RunId> id;
  std::optional<std::string> idempotency_key;
};

// The JSON stored for a flow version: slug, input_schema, and per step its slug, kind, depends_on,
// handler and effective options (max_attempts, base_delay_ms, max_delay_ms, timeout_ms). Steps
// come in a stable topological order (dependencies first, else as declared).
Json flow_definition_json(const FlowDef& flow);
// {"limit": N, "key": "/pointer"} (no key: one key), as definitions store it and the API gives it.
Json concurrency_json(const Concurrency& c);
// {"limit": N, "per_ms": M, "key": "/pointer"}, as definitions store a rate limit.
Json rate_limit_json(const RateLimit& r);

// The window of a RunStore::scrape_counts call: runs created, or ended, after since_us and at
// most 3 s before the call. The runs of a flow ended in it are looked for among its stragglers
// and among its runs created at or after its live_from_us, or since_us for a flow not listed;
// all come from the previous call (ScrapeCounts::next).
struct ScrapeWindow {
  std::int64_t since_us = 0;  // server clock, microseconds since the epoch
  // Per flow slug, the start of its oldest run not ended at since_us (the same clock), stragglers
  // aside: no other run of the flow that may end after since_us started before it. A flow not
  // listed had none, so its runs that may end after since_us started after it, or are
  // stragglers. Per flow, so that a run left started in one flow bounds the reads of that flow's
  // runs alone.
  std::map<std::string, std::int64_t, std::less<>> live_from_us;
  // Per flow slug, the ids of its oldest runs not ended at since_us that had started before the
  // window before it (at most ScrapeCounts' max_stragglers, all started before the flow's
  // live_from_us): they are read by id, so that a run left started for days does not make every
  // scrape read the runs of its flow started since.
  std::map<std::string, std::vector<std::string>, std::less<>> stragglers;
};

// What RunStore::scrape_counts reads for metrics.
struct ScrapeCounts {
  struct Runs {
    std::string flow_slug;
    RunStatus status = RunStatus::started;  // started: runs created; else runs that ended so
    std::int64_t count = 0;
  };
  struct Tasks {
    std::string flow_slug;
    std::int64_t queued = 0, running = 0;
    // When its oldest queued task that is ready now became ready (µs since the epoch, the
    // server's clock), 0 when none is.
    std::int64_t oldest_ready_us = 0;
  };
  std::vector<Runs> runs;    // in (since, upto]; empty when since was not given
  std::vector<Tasks> tasks;  // flows with queued or running tasks now
  // The next call's window: since_us is this one's end (the server's now() - 3 s); per flow, the
  // runs not ended by then that started before this window (up to max_stragglers, the oldest) as
  // stragglers, and live_from_us the start of its oldest other run not ended by then (flows with
  // none are not listed).
  ScrapeWindow next;
};

// Retention (docs/operations.md#retention; flowreg.retain, migration 0029).
// Key of the session advisory lock that one retention round at a time holds: "flowretn" in ASCII.
inline constexpr std::int64_t kRetentionLockKey = 0x666c6f777265746e;

// What one round of retention did.
struct RetentionRound {
  bool locked_out = false;  // another session held the retention lock: nothing was done
  std::int64_t runs = 0;    // runs deleted (with their steps, tasks, attempts and signals)
  std::int64_t events = 0;
  std::int64_t buckets = 0;  // idle rate-limit buckets
  Millis took{0};
};

// What the rounds of retention did, as flowreg.retention records them, and the history kept.
struct RetentionState {
  std::int64_t rounds = 0, runs_removed = 0, events_removed = 0;
  std::optional<TimePoint> last_at;  // the end of the last round
  Millis last_took{0};
  std::int64_t last_runs = 0;
  std::string last_worker, last_error;
  std::optional<TimePoint> oldest_run;  // the creation of the oldest run kept; none: no runs
  bool running = false;                 // a session holds the retention lock now
  TimePoint now;                        // the server's clock
};

// What holds VACUUM back (health_holders.sql): a session with an old snapshot or transaction, a
// prepared transaction, a replication slot, a standby's hot_standby_feedback.
struct VacuumHolder {
  std::string kind;  // session, prepared, slot, standby
  std::string name;  // a pid, a prepared transaction's gid, a slot's name
  std::string application, who, client, state, query;
  std::int64_t xmin_age = 0;       // transactions since its xmin
  std::optional<TimePoint> since;  // when its transaction started
};

// One of flowreg's tables (health_tables.sql).
struct TableHealth {
  std::string name;
  std::int64_t live = 0, dead = 0, table_bytes = 0, index_bytes = 0, bloat_bytes = 0, vacuums = 0;
  std::optional<TimePoint> vacuumed, analyzed;
};

struct DbHealth {
  std::vector<VacuumHolder> holders;  // the oldest first
  std::vector<TableHealth> tables;
  RetentionState retention;
};

class RunStore {
 public:
  // Connects (Errc::database on failure). The database must hold the migrated schema.
  static Result<RunStore> connect(const std::string& conninfo);

  RunStore(RunStore&&) noexcept;
  RunStore& operator=(RunStore&&) noexcept;
  RunStore(const RunStore&) = delete;
  RunStore& operator=(const RunStore&) = delete;
  ~RunStore();

  // Stores `flow` as (flow.slug, version). Idempotent. A stored version whose options or input
  // schema differ is updated: new attempts and retry delays apply to its queued and running tasks
  // too, a new timeout to the tasks created from then on (a task copies it when created).
  // Errc::invalid_argument when that version is stored with a different shape (steps, kinds,
  // dependencies, handlers), or when the flow is malformed (unknown dependency, a cycle, a map
  // step with more than one dependency); steps may be declared in any order. Returns true when
  // this call stored or updated it.
  Result<bool> upsert_flow(const FlowDef& flow, std::string_view version);

  // Starts a run of a stored flow version (Errc::not_found when it is not stored). Input
  // validation is the caller's job.
  Result<RunId> start_run(std::string_view flow_slug, std::string_view version, const Json& input,
                          const StartOptions& options = {});
  // Starts one run per input in one transaction (no idempotency keys): all of them, or none. The
  // runs of a flow of one single step, from two inputs on, are written by COPY, which PostgreSQL
  // logs in fewer bytes (flowreg._start_copying); any other batch is one call of start_runs. When
  // the server refuses an input (U+0000 in a string or key, or nesting deeper than its stack
  // allows), none starts, and the error (Errc::invalid_argument) names the first input holding
  // U+0000 or nested deeper than kMaxStoredDepth, by its index (else the server's error stands).
  // With start_at, the runs start at that time (as StartOptions::start_at), with priority, they
  // have that priority (as StartOptions::priority), in the same transaction.
  Result<std::vector<RunId>> start_runs(std::string_view flow_slug, std::string_view version,
                                        std::span<const Json> inputs,
                                        std::optional<TimePoint> start_at = std::nullopt,
                                        std::optional<int> priority = std::nullopt);

  // Up to `limit` ready tasks of these flow versions, leased to `worker_id` for their step's
  // timeout. Never waits for tasks other claimers hold (SKIP LOCKED). A claimed task that cannot
  // be run (see WorkResult::unusable) is failed permanently, with the reason, and left out.
  Result<std::vector<ClaimedTask>> claim(std::string_view worker_id, std::span<const FlowKey> flows,
                                         int limit);
  // Extends leases by min(each step's timeout, lease) from now (no lease: the timeout). Returns
  // the ids rejected: not started, held by another worker, or a newer attempt.
  // skip_locked: tasks whose rows another transaction is writing (their result being recorded)
  // are neither renewed nor rejected, instead of waiting for that transaction.
  Result<std::vector<TaskId>> renew(std::string_view worker_id, std::span<const TaskAttempt> tasks,
                                    std::optional<Millis> lease = std::nullopt,
                                    bool skip_locked = false);
  // One worker cycle in one transaction: records `completions` and `failures` (as complete() and
  // fail() do), then claims up to `limit` tasks of `flows` (as claim() does, each leased for
  // min(its step's timeout, lease)), tasks the completions just made ready included.
  Result<WorkResult> work(std::string_view worker_id, std::span<const Completion> completions,
                          std::span<const Failure> failures, std::span<const FlowKey> flows,
                          int limit, std::optional<Millis> lease);
  // Gives back tasks this worker holds (graceful shutdown); returns the ids released. Other
  // workers are notified.
  Result<std::vector<TaskId>> release(std::string_view worker_id, std::span<const Release> tasks);
  // Records (upserts) a worker's heartbeat, with its state and heartbeat interval; stopped = true
  // marks it stopped.
  Result<void> heartbeat(const WorkerRecord& worker, bool stopped);
  // Reports tasks that were running in a worker that died: one with a signal fails permanently
  // ("handler crashed the worker (signal N)"); one without gets a crash counted and fails at
  // `limit` crashes. Reports of an attempt that is no longer current are stale.
  Result<std::vector<CrashOutcome>> report_crashes(std::span<const CrashReport> reports, int limit);
  // Schedules (docs/schedules.md). upsert_schedule creates `def` or replaces its definition; its
  // next tick becomes `next_fire_at` when it is new or its cron or time zone changed. `paused`
  // applies when it is created, or always with set_paused. Returns whether it was created.
  Result<bool> upsert_schedule(const ScheduleDef& def, std::string_view source,
                               TimePoint next_fire_at, bool set_paused);
  // Deletes the schedules of `source` not named in `keep`; returns their names.
  Result<std::vector<std::string>> retire_schedules(std::string_view source,
                                                    std::span<const std::string> keep);
  // Every schedule by name, or the one named (empty when there is none).
  Result<std::vector<ScheduleRecord>> list_schedules(std::string_view name = {});
  // Whether there was one.
  Result<bool> delete_schedule(std::string_view name);
  // Pauses, or resumes with its next tick at `next_fire_at`. Whether there was one.
  Result<bool> pause_schedule(std::string_view name, bool paused, TimePoint next_fire_at);
  // Records a run started by hand from the schedule. Whether there was one.
  Result<bool> record_schedule_trigger(std::string_view name, const RunId& run);
  // One transaction: reads up to `limit` schedules of these flows due now, the most overdue
  // first, locking them (others reading at once take others), hands them to `plan`, and fires
  // what it returns (fire_schedules). `due` receives what was read.
  Result<std::vector<ScheduleFired>> fire_due_schedules(
      std::span<const std::string> flows, int limit, DueSchedules& due,
      const std::function<std::vector<ScheduleFiring>(const DueSchedules&)>& plan);
  // Fires these schedules in one transaction (each locked and checked again).
  Result<std::vector<ScheduleFired>> fire_schedules(std::span<const ScheduleFiring> firings);
  // The first `limit` schedules by name, of flow `flow` ("" for every flow), after the name
  // `after` ("" for the first).
  Result<std::vector<ScheduleRecord>> list_schedules_page(std::string_view flow, int limit,
                                                          std::string_view after = {});
  // The schedules counted by state, and the `limit` unpaused ones with the earliest next tick.
  Result<ScheduleGauges> schedule_gauges(int limit);

  // Workers, most recent heartbeat first.
  Result<std::vector<WorkerRecord>> list_workers();
  // Deletes a worker's row when it stopped or is stale (no heartbeat for 3 of its intervals): its
  // tasks are not touched (their leases expire as they would). running: it is neither; unknown: no
  // such worker. A worker that heartbeats again is listed again.
  Result<ForgetOutcome> forget_worker(std::string_view id);
  // Forgets every stopped or stale worker whose last heartbeat is older than `age`; their ids.
  Result<std::vector<std::string>> forget_workers_before(Millis age);

  // True once a call failed because the connection to the server broke (or a commit's outcome is
  // unknown): the store is unusable and must be replaced by a fresh connect(). Calls that fail
  // with an SQL error leave it usable.
  bool connection_lost() const noexcept;
  // Records outputs; starts what becomes ready, completes steps and runs. Returns the ids
  // rejected (attempt no longer current, task no longer started): their result is not recorded.
  Result<std::vector<TaskId>> complete(std::span<const Completion> completions);
  // Records failures: retried with backoff while attempts remain and not permanent, else the
  // step and the run fail and the run's other tasks are cancelled; a snooze (Failure::snooze)
  // queues its task again for later, its attempt given back. Returns the ids rejected.
  Result<std::vector<TaskId>> fail(std::span<const Failure> failures);

  // true when it cancelled the run, false when the run had already ended; Errc::not_found.
  Result<bool> cancel_run(const RunId& run);
  // Sends a signal to a run's wait step (docs/flows.md#wait-steps): delivered at once when the
  // step waits, kept for it when it has not started yet. A key sent before under this run and
  // name: that signal, outcome "duplicate", nothing written. Errc::not_found: no such run;
  // Errc::invalid_argument (a conflict: HTTP 409) when the run's flow waits for no such signal,
  // the run has ended, the signal was sent before (each is delivered once) or its step has ended.
  Result<SignalSent> send_signal(const RunId& run, std::string_view name, const Json& data,
                                 const std::optional<std::string>& key = std::nullopt);
  // Sends an event: resumes every wait step waiting for it now whose match holds, in one call.
  // A key sent before under this name: that event, duplicate true, nothing resumed again.
  Result<EventSent> send_event(std::string_view name, const Json& data,
                               const std::optional<std::string>& key = std::nullopt);
  // A new run of an ended run's flow version with its input, retry_of = run. Errc::not_found;
  // Errc::invalid_argument when the run is still running. From RetryFrom::failed_step: the steps
  // that completed in `run` are completed in the new run with their outputs, not run again, and
  // the others start as they would given those (Errc::invalid_argument unless `run` failed).
  Result<RunId> retry_run(const RunId& run, RetryFrom from = RetryFrom::start);
  // Deletes runs that ended more than `older_than` ago, with their steps and tasks; their count.
  // In transactions of at most `batch` runs each (>= 1), until one deletes fewer: a transaction
  // that ran for as long as a whole history takes to delete would keep VACUUM from cleaning the
  // queue meanwhile. An error after some batches leaves those deleted (each batch is whole).
  static constexpr int kPruneBatch = 10'000;
  Result<std::int64_t> prune(Millis older_than, int batch = kPruneBatch);
  // Deletes the events sent more than `older_than` ago (docs/flows.md#wait-steps), `batch` per
  // statement, oldest first; returns how many. Their idempotency keys are forgotten with them.
  Result<std::int64_t> prune_events(Millis older_than, int batch = kPruneBatch);
  // Deletes the buckets of rate limits (migration 0024) whose tokens were last taken more than a
  // day ago: full buckets, which a missing row stands for. Walks them by key, `batch` at a time,
  // each batch its own statement. Returns how many it deleted.
  Result<std::int64_t> prune_rate_buckets(int batch = kPruneBatch);

  // One round of retention (flowreg.retain): under the retention lock (taken at once, or the
  // round is locked_out), the ended runs whose time is up by `settings` and their flows' own
  // retention, in transactions of at most `batch` runs each; then the events older than
  // settings.events and the idle rate-limit buckets; recorded in flowreg.retention as by
  // `worker`. `stop` is asked between batches: true ends the round early (what was deleted stays
  // deleted).
  static constexpr int kRetainBatch = 1'000;
  Result<RetentionRound> retain(const RetentionSettings& settings, std::string_view worker,
                                int batch = kRetainBatch, const std::function<bool()>& stop = {});
  Result<RetentionState> retention_state();
  // What holds VACUUM back (the `holders` oldest), flowreg's tables, and retention's state.
  Result<DbHealth> db_health(int holders = 10);

  Result<std::optional<RunInfo>> get_run(const RunId& run);
  // Newest first. Keyset pagination: with `before`, only the runs after that one in this order
  // (none when no run has that id).
  Result<std::vector<RunInfo>> list_runs(const RunFilter& filter = {},
                                         const std::optional<RunId>& before = std::nullopt);
  // The runs of a filter as summaries (the inputs and outputs are not read), newest first, for
  // lists that may be long. With a cursor: the page after that run, or (cursor.newer) the page
  // before it, still newest first; when no run has that id any more (a run pruned since), the
  // millisecond its id holds (a UUID version 7) stands for its place, so that none is skipped;
  // none for an id of another version.
  Result<std::vector<RunSummary>> list_run_summaries(
      const RunFilter& filter = {}, const std::optional<RunCursor>& cursor = std::nullopt);
  // In the flow's step order; empty when there is no such run.
  Result<std::vector<StepInfo>> run_steps(const RunId& run);
  // The run's flow and the steps of its flow version (its DAG), in the flow's step order, read
  // without its input and output; nullopt when there is no such run.
  Result<std::optional<RunGraph>> run_graph(const RunId& run);
  // At most `limit` tasks of a run's step that the queue still holds, with a task index of
  // `from_index` or more, by index.
  Result<std::vector<TaskRow>> step_tasks(const RunId& run, std::string_view step, int from_index,
                                          int limit);
  // The steps of the run waiting for a retry: per step, its task due first; by step slug.
  Result<std::vector<StepRetry>> step_retries(const RunId& run);
  // The attempts of the run's tasks (of step `step` only, unless empty), by step order, task and
  // attempt number: `limit` of them from the `offset`th, and the number in all.
  Result<AttemptPage> task_attempts(const RunId& run, const std::string& step, int limit,
                                    int offset);
  // The runs list_run_summaries would list that have this id and/or this key (a key names at most
  // one run per flow), newest first, at most filter.limit. search.id must be a UUID's text.
  Result<std::vector<RunSummary>> find_run_summaries(const RunFilter& filter,
                                                     const RunSearch& search);
  // How many runs list_run_summaries lists with no limit, counting no more than `at_most` (the
  // count stops there: a count of a long history would read all of it).
  Result<std::int64_t> count_runs(const RunFilter& filter, int at_most);

  // For metrics, in one statement of index range scans: tasks queued and running per flow, and
  // runs started and ended per flow and status with created_at (finished_at) in
  // (window.since_us, upto], upto being the server's now() - 3 s (a run's timestamps are its
  // transaction's start: the lag lets transactions commit before their window is read).
  // window: a previous call's `next`; nullopt: no runs are counted (the first call opens the
  // window). A flow's runs ended are read among those created from its window.live_from_us on
  // (every run that can end in the window, see ScrapeCounts::next), not in the whole history: a
  // call reads each flow's runs created since its oldest run that was not ended at the previous
  // call's end, except for up to max_stragglers runs per flow started before the window before,
  // which it reads by id.
  Result<ScrapeCounts> scrape_counts(std::optional<ScrapeWindow> window, int max_stragglers = 100);

 private:
  struct Impl;
  explicit RunStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct Notification {
  std::string channel;
  std::string payload;
};

// A connection LISTENing on some channels. Notifications are queued in arrival order.
class Listener {
 public:
  // Default channels: kTasksChannel and kRunsChannel.
  static Result<Listener> connect(const std::string& conninfo,
                                  std::vector<std::string> channels = {std::string(kTasksChannel),
                                                                       std::string(kRunsChannel)});
  Listener(Listener&&) noexcept;
  Listener& operator=(Listener&&) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  // The next notification, waiting up to `timeout` for one; nullopt on timeout.
  Result<std::optional<Notification>> wait(Millis timeout);
  // True once the connection broke: notifications may have been missed; connect a new Listener.
  bool connection_lost() const noexcept;

 private:
  struct Impl;
  Result<std::optional<Notification>> wait_for(Millis timeout);
  explicit Listener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flowreg::detail
