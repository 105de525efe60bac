#pragma once
// The flow model: a flow is a DAG of steps with a slug, options and handlers.
//
// Plain values (copyable, comparable). A FlowDef says nothing about where its handlers' code lives;
// the registry pairs it with the module that defines it.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/options.hpp"

namespace flowreg {

enum class StepKind {
  single,  // one task with the step's input
  map,     // one task per element of its input array; outputs aggregated in order
  sleep,   // no handler: ends after a duration or at a time in its input (durable: a sleeping run
           // holds no task lease, thread or claim)
  wait,    // no handler: ends when its run gets a signal, or an event matching its input arrives
           // (durable, holding nothing while it waits); its output: their data
  flow,    // no handler: starts a run of another flow (one per element with map) and ends with
           // its end, its output the child run's (durable, holding nothing while it waits)
};

std::string_view to_string(StepKind kind) noexcept;
std::optional<StepKind> parse_step_kind(std::string_view text) noexcept;

// Where a flow's handlers run in a worker (docs/plugins.md, "Isolation"):
//   thread   on the worker's handler threads: the fastest, but a crashing handler kills the worker
//            and a hung one holds a thread until the worker is replaced
//   process  in a pool of handler processes per plugin (each loaded the plugin once): a crash, a
//            hang or a limit costs the one task, never the worker
enum class Isolation { thread, process };
std::string_view to_string(Isolation isolation) noexcept;
std::optional<Isolation> parse_isolation(std::string_view text) noexcept;

// What one handler process may use (isolation: process); 0: no limit of that kind. Set on a flow
// (`limits:`) or as the worker's default (`worker.limits`); a flow's non-zero values win.
struct HandlerLimits {
  std::uint64_t memory_mb = 0;  // address space (RLIMIT_AS), MiB
  Millis cpu{0};                // CPU time of one task (RLIMIT_CPU, whole seconds, rounded up)
  int open_files = 0;           // RLIMIT_NOFILE
  int processes = 0;            // RLIMIT_NPROC; for root, a pids cgroup (docs/plugins.md)

  // These limits, each unset one taken from `base`.
  HandlerLimits over(const HandlerLimits& base) const noexcept;
  friend bool operator==(const HandlerLimits&, const HandlerLimits&) = default;
};

// A concurrency limit per key (docs/flows.md#concurrency-limits): on a flow, at most `limit` of
// its runs active at once with the same key (a run holds its slot from the claim of its first
// task to its end); on a step, at most `limit` of its tasks running at once with the same key. The
// key is the text at the JSON pointer `key` in the run's input; "" when the input has nothing
// there, and for every run when `key` is unset (one key for the whole flow or step).
struct Concurrency {
  static constexpr int kMaxLimit = 100'000;
  static constexpr std::size_t kMaxKeyLength = 256;  // of the pointer

  int limit = 1;
  std::optional<std::string> key;  // a JSON pointer (RFC 6901): "" or "/name/..."

  friend bool operator==(const Concurrency&, const Concurrency&) = default;
};

// A rate limit per key (docs/flows.md#rate-limits): at most `limit` task starts per `per` with the
// same key, a token bucket of `limit` tokens refilled at limit/per. On a flow, over the tasks of
// all its steps; on a step, over its tasks. The key is read as a concurrency limit's is; unset: one
// key (one bucket), also when the tasks have a concurrency limit with a key.
struct RateLimit {
  static constexpr int kMaxLimit = 1'000'000;
  static constexpr Millis kMaxPer{24 * 3600 * 1000};

  int limit = 1;
  Millis per{1000};
  std::optional<std::string> key;  // a JSON pointer (RFC 6901): "" or "/name/..."

  friend bool operator==(const RateLimit&, const RateLimit&) = default;
};

// How long ended runs are kept (docs/operations.md#retention), per status: an age after the run's
// end, or kKeep (forever). Unset: the worker's default (`worker.retention`). A worker deletes the
// runs whose time is up, in small batches, one worker at a time (worker/retainer.hpp).
struct Retention {
  static constexpr Millis kKeep = Millis::max();
  static constexpr Millis kMaxAge{3660LL * 24 * 3600 * 1000};  // about 10 years

  std::optional<Millis> completed, failed, cancelled;

  bool empty() const noexcept { return !completed && !failed && !cancelled; }
  // These ages, each unset one taken from `base`.
  Retention over(const Retention& base) const noexcept {
    return {completed ? completed : base.completed, failed ? failed : base.failed,
            cancelled ? cancelled : base.cancelled};
  }
  friend bool operator==(const Retention&, const Retention&) = default;
};

// Retention as a worker enforces it (`worker.retention`, docs/operations.md#retention): the
// default ages of ended runs (a flow's own retention wins), the age of events, and how often.
struct RetentionSettings {
  static constexpr Millis kDay{24LL * 3600 * 1000};

  Retention runs{7 * kDay, 30 * kDay, 7 * kDay};
  Millis events = 7 * kDay;  // Retention::kKeep: forever
  Millis interval{60'000};   // between two rounds of a worker's retention
  bool enabled = true;       // whether this worker takes part

  friend bool operator==(const RetentionSettings&, const RetentionSettings&) = default;
};

// What a sleep step waits for (docs/flows.md#sleep-steps): exactly one of the two.
struct Sleep {
  static constexpr Millis kMaxDuration{366LL * 24 * 3600 * 1000};
  static constexpr std::size_t kMaxPointerLength = 256;

  std::optional<Millis> duration;    // from the step's start
  std::optional<std::string> until;  // JSON pointer to an RFC 3339 time in the step's input

  friend bool operator==(const Sleep&, const Sleep&) = default;
};

// What a wait step waits for (docs/flows.md#wait-steps): a signal sent to its run by name, or an
// event by name whose data matches values of its input; exactly one of the two. With a timeout,
// the step fails when it ends, or completes with `default_output` when that is set.
struct Wait {
  static constexpr Millis kMaxTimeout{366LL * 24 * 3600 * 1000};
  static constexpr std::size_t kMaxNameLength = 128;
  static constexpr std::size_t kMaxMatch = 16;  // pairs in a match
  static constexpr std::size_t kMaxDefaultBytes = 64 * 1024;

  std::optional<std::string> signal;
  std::optional<std::string> event;
  // An event's match: (pointer into the event's data, pointer into the step's input: its run's
  // input for a root step, else {dependency: output}); the event resumes the step when every
  // pair's values are equal. None: every event of that name resumes it.
  std::vector<std::pair<std::string, std::string>> match;
  std::optional<Millis> timeout;
  std::optional<nlohmann::json> default_output;  // its output when the timeout ends

  friend bool operator==(const Wait&, const Wait&) = default;
};

// A signal's or an event's name: 1 to 128 of A-Z a-z 0-9 _ . : -, starting with a letter or a
// digit (it is a segment of the API's paths).
bool is_valid_wait_name(std::string_view name) noexcept;

// Which dependencies a step needs completed to start (docs/flows.md#conditional-steps): all of
// them (a skipped one skips it too), or any one (it starts once each has completed or been
// skipped, when at least one completed).
enum class Trigger { all, any };
std::string_view to_string(Trigger trigger) noexcept;

// A step's `when` (docs/flows.md#conditional-steps): a condition over its input (its run's input
// for a root step, else {dependency: output} of its completed dependencies), as JSON:
//   {"at": pointer, "equals": value}   the value at the pointer equals it (JSON equality)
//   {"at": pointer, "in": [values]}    ... equals one of them
//   {"at": pointer, "exists": bool}    something (even null) is there, or nothing is
//   {"all": [conditions]}, {"any": [conditions]}, {"not": condition}
// A pointer that resolves to nothing makes `equals` and `in` false.
struct Condition {
  static constexpr std::size_t kMaxDepth = 8;
  static constexpr std::size_t kMaxNodes = 64;
  static constexpr std::size_t kMaxList = 100;         // values of an `in`, operands of all / any
  static constexpr std::size_t kMaxBytes = 16 * 1024;  // of the whole condition as JSON
};

// A JSON pointer as `flows show` and the pages print it: as written, or as JSON text (quoted,
// escaped) when it holds a control character (a plugin's text reaches terminals).
std::string shown_pointer(const std::string& pointer);

// The condition as one line of text ("/charge/status equals \"paid\" and not /x exists"), for
// `flows show`, the dashboard and messages. REQUIRES: a condition validate_flow accepted.
std::string condition_text(const nlohmann::json& condition);

// What a flow step starts (docs/flows.md#child-flows): a run of flow `flow`, at the version stored
// last, with the step's input; with `map`, one per element of its input array (in order, the
// step's output their outputs in that order).
struct Child {
  static constexpr int kMaxDepth = 8;  // runs nested in one another at most: the top one's is 0
  static constexpr std::size_t kMaxRuns = 1000;  // child runs of one map step

  std::string flow;
  bool map = false;

  friend bool operator==(const Child&, const Child&) = default;
};

struct StepDef {
  std::string slug;
  StepKind kind = StepKind::single;
  std::vector<std::string> depends_on;                    // slugs of steps of the same flow
  std::string handler;                                    // "module.handler"; "" for sleep and wait
  OptionOverrides options;                                // on top of the flow's options
  std::optional<Concurrency> concurrency = std::nullopt;  // its tasks running at once per key
  std::optional<RateLimit> rate_limit = std::nullopt;     // its task starts per period per key
  std::optional<Sleep> sleep = std::nullopt;              // kind sleep: what it waits for
  std::optional<Wait> wait = std::nullopt;                // kind wait: what it waits for
  std::optional<Child> child = std::nullopt;              // kind flow: the flow it starts
  std::optional<nlohmann::json> when = std::nullopt;      // runs only when it holds (Condition)
  Trigger trigger = Trigger::all;                         // which dependencies it needs completed

  friend bool operator==(const StepDef&, const StepDef&) = default;
};

struct FlowDef {
  std::string slug;
  std::string module;  // the plugin or YAML file that defines it
  std::string description;
  Options options;                             // the flow's options, defaults filled in
  std::optional<nlohmann::json> input_schema;  // JSON Schema (draft 7) for the run input
  std::vector<StepDef> steps;
  // Where its handlers run; unset: the worker's default (worker.isolation, thread when unset).
  std::optional<Isolation> isolation;
  HandlerLimits limits;  // of its handler processes, over the worker's
  std::optional<Concurrency> concurrency = std::nullopt;  // its runs active at once per key
  std::optional<RateLimit> rate_limit = std::nullopt;     // its task starts per period per key
  Retention retention;  // how long its ended runs are kept, over the worker's default
  std::string source;   // file it was read from, for messages ("" when built in code)

  // The options a step runs with: its overrides on top of the flow's options.
  Options step_options(const StepDef& step) const noexcept { return step.options.apply(options); }
  const StepDef* find_step(std::string_view step_slug) const noexcept;

  friend bool operator==(const FlowDef&, const FlowDef&) = default;
};

// Content hash of the flow's shape: steps, kinds, dependencies, handlers, sleeps, waits, conditions
// and triggers, not its
// tuning options, description or schema. 16 lowercase hex digits. Two flows with the same shape
// have the same version whatever the order their steps and dependencies were written in.
std::string flow_version(const FlowDef& flow);

// Steps in an order where every step comes after its dependencies (stable: declaration order among
// independent steps). REQUIRES: the flow is valid (no cycle, no unknown dependency).
std::vector<const StepDef*> topological_order(const FlowDef& flow);

}  // namespace flowreg
