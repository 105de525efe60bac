#pragma once
// The web dashboard's pages, rendered on the server from the API's JSON forms (cli/common.hpp:
// flow_json, run_json, step_json, worker_json, plugin_json). Every string that comes from a
// plugin, a YAML file, a run's input or a handler (slugs, descriptions, errors, outputs) is
// HTML-escaped; scripts come only from /static/app.js (the pages carry a Content-Security-Policy
// that forbids inline scripts).

#include <string>
#include <string_view>

#include "app/forms.hpp"

namespace flowreg::detail::dashboard {

using app::json;

// &, <, >, " and ' as character references.
std::string escape(std::string_view text);

// `runs_error`: why the runs could not be read (the database is unreachable), shown in their place;
// empty when they were read.
// `db_warnings`: the database's warnings (app::health_report's), shown above the flows.
std::string flows_page(const json& flows, const json& recent_runs, std::string_view runs_error = {},
                       const json& db_warnings = nullptr);
std::string flow_page(const json& flow, const json& runs, std::string_view runs_error = {});
// The runs come as summaries (app::run_summary_json).
// `filter`: {flow, status, id, key, since, until, text} as given (strings, possibly empty),
// {total, total_exact}: how many runs match (counted up to a bound: when not exact, more than
// total), and with a text {text_scan, text_input_bytes}: the bounds of the search; `next_before`:
// the id of the last run listed when there may be older runs, else ""; `next_after`: the id of the
// first run listed when there are newer runs (a page reached by paging), else "".
// The flow page holds a form that starts a run (static/app.js sends it), its input prefilled with
// the input schema's required properties.
std::string runs_page(const json& runs, const json& flows, const json& filter,
                      std::string_view next_before, std::string_view next_after = {});
// With "steps". The input, the output and each step's output are shown by their size and their
// first kPreviewBytes bytes as JSON text, with a link to the whole value: never embedded whole.
inline constexpr std::size_t kPreviewBytes = 4096;
// `tasks`: a page of one step's tasks (GET /api/v1/runs/{id}/steps/{step}/tasks), or null.
// `attempts`: a page of the run's attempts (ServerState::run_attempts), shown under the steps;
// null: none shown.
std::string run_page(const json& run, const json& tasks = nullptr, const json& attempts = nullptr);
// `health`: the database's health (GET /api/v1/health's body), shown under the workers; a string:
// why it could not be read; null: not shown.
std::string workers_page(const json& workers, const json& health = nullptr);
std::string plugins_page(const json& plugins);
// The schedules (app::schedule_json's), by name, each with its buttons (forms POSTing to
// /schedules/{name}/pause, resume, trigger and delete); `more`: there are more than those shown;
// `notice`: HTML (schedule_notice's) shown above them, or "". A flow page shows the schedules of
// its flow when the flow's JSON has "schedules" (and "schedules_more"), or "schedules_error".
std::string schedules_page(const json& schedules, bool more, std::string_view notice = {});
std::string schedule_page(const json& schedule, std::string_view notice = {});
// What a schedule's button did, as HTML: `done` is paused, resumed, triggered (with `run`, the id
// of the run it started) or deleted; "" for anything else. `name` and `run` are escaped.
std::string schedule_notice(std::string_view done, std::string_view name, std::string_view run);
std::string error_page(int status, std::string_view title, std::string_view detail);

}  // namespace flowreg::detail::dashboard
