#pragma once
// Starting a run, the same from every front end: the input checked before anything is written
// (nesting, JSON syntax, the flow's input schema), the idempotency key checked, the flow's version
// stored, the run started and read back.
//
// Thread-safety: free functions; the RunStore passed in is used by one thread at a time (its own
// contract).

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "config/json_schema.hpp"
#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/flow_registry.hpp"
#include "store/run_store.hpp"

namespace flowreg::app {

// The longest idempotency key a run may carry, in bytes.
inline constexpr std::size_t kMaxIdempotencyKeyBytes = 255;

// A run's input, given as JSON text, checked before anything is written: the nesting limit of
// YAML files, then JSON syntax (Errc::parse, the message starting with `what`, "--input" for the
// command line), then what PostgreSQL would refuse (a string or key holding U+0000:
// Errc::invalid_argument, stored_json_problem's reason as message and detail), then the flow's
// input schema (Errc::invalid_argument, one detail per problem: "input of flow 'x': ...").
Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what);
// The same with the flow's input schema compiled once for many inputs (nullptr: none).
Result<nlohmann::json> check_input(std::string_view text, const FlowDef& flow,
                                   std::string_view what, const detail::JsonSchema* schema);

// An idempotency key from outside: at most kMaxIdempotencyKeyBytes (Errc::invalid_argument
// otherwise), invalid UTF-8 replaced. Empty: none.
Result<std::optional<std::string>> check_idempotency_key(std::string_view key);

// The most bytes of JSON a signal's or an event's data may be (docs/flows.md#wait-steps): the
// default limit of a handler's output (worker.max_output_bytes), which it becomes.
inline constexpr std::size_t kMaxWaitDataBytes = std::size_t{16} << 20;
// A signal's or an event's data from outside, as JSON text: checked as a run's input is
// (check_input: nesting, syntax as Errc::parse, U+0000), and at most kMaxWaitDataBytes
// (Errc::invalid_argument, "… is N bytes; the limit is …"). Empty text: null.
Result<nlohmann::json> check_wait_data(std::string_view text, std::string_view what);
// A signal's or an event's name from outside: is_valid_wait_name, else Errc::invalid_argument
// naming `what` ("signal", "event") and the rule.
Result<void> check_wait_name(std::string_view name, std::string_view what);
// What a send answered: {"id", "run", "signal", "outcome"} and {"id", "event", "resumed",
// "duplicate"}.
nlohmann::json signal_sent_json(std::string_view run, std::string_view name,
                                const detail::SignalSent& sent);
nlohmann::json event_sent_json(std::string_view name, const detail::EventSent& sent);

// How far ahead a delayed start may be: 10 years (3,653 days).
inline constexpr Millis kMaxStartAhead{3'653LL * 24 * 3'600'000};

// When a run starts (StartOptions::start_at), from a time `at` (RFC 3339: 2026-11-27T18:00:00Z,
// with an optional fraction, and Z or an offset such as +01:00) or a delay from `now` (`delay`:
// parse_duration's forms, 250ms, 30s, 5m, 2h); empty: not given. `at_name` and `delay_name` name
// them in messages ("--at", "run_at"). nullopt: at once (neither given, a time not after `now`, a
// delay of 0). Errc::invalid_argument: both given, one that does not parse, or a time more than
// kMaxStartAhead after `now`.
Result<std::optional<detail::TimePoint>> start_time(std::string_view at, std::string_view delay,
                                                    detail::TimePoint now, std::string_view at_name,
                                                    std::string_view delay_name);

// A run's priority from outside (StartOptions::priority): an integer in
// Options::kMinPriority..kMaxPriority, written in decimal; empty: none (its steps'). `name` names
// it in messages ("priority"). Errc::invalid_argument otherwise.
Result<std::optional<int>> check_priority(std::string_view text, std::string_view name);

// Stores the flow's version (once per version), starts a run of it with `input` (checked by
// check_input) and reads it back. A key used again with the same input returns that key's run; with
// another input, the store's Errc::invalid_argument.
Result<detail::RunInfo> start_run(detail::RunStore& store, const RegisteredFlow& flow,
                                  const nlohmann::json& input, const detail::StartOptions& options);

// Where a retry starts, as the API's `?from=` and the dashboard name it: "start" (or empty) for
// a new run of the whole flow, "failed" for the failed run's failed step (RetryFrom). nullopt
// for anything else.
std::optional<detail::RetryFrom> parse_retry_from(std::string_view from);

// Retries an ended run as a new run from `from` (RunStore::retry_run) and reads the new run back.
Result<detail::RunInfo> retry_run(detail::RunStore& store, const detail::RunId& run,
                                  detail::RetryFrom from);

}  // namespace flowreg::app
