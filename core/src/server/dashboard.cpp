#include "server/dashboard.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <optional>

#include "app/forms.hpp"
#include "app/graph_svg.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::detail::dashboard {

namespace {

std::string str(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  return it->is_string() ? it->get<std::string>() : json_text(*it);
}

std::string esc(const json& j, const char* key) { return escape(str(j, key)); }

std::string url_part(std::string_view text) {
  std::string out;
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
      out += ch;
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

std::string status_badge(std::string_view status, std::string_view data_attr = {}) {
  return fmt::format("<span class=\"status s-{0}\"{1}>{0}</span>", escape(status), data_attr);
}

std::string layout(std::string_view title, std::string_view current, std::string_view content,
                   std::string_view watch_run = {}, bool live = true) {
  static constexpr std::pair<std::string_view, std::string_view> kNav[] = {
      {"/", "Flows"},
      {"/runs", "Runs"},
      {"/schedules", "Schedules"},
      {"/workers", "Workers"},
      {"/plugins", "Plugins"}};
  std::string nav;
  for (const auto& [href, name] : kNav)
    nav += fmt::format("<a href=\"{}\"{}>{}</a>", href,
                       href == current ? " aria-current=\"page\"" : "", name);
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
      // A POST from the page (fetch) carries its Origin, which the server checks: under a
      // no-referrer policy browsers would send 'Origin: null' instead (the server sends
      // same-origin; this holds whatever a proxy in front of it sends).
      "<meta name=\"referrer\" content=\"same-origin\">"
      "<title>{0} · flowreg</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>"
      "<body data-watch-run=\"{1}\"><header><span class=\"brand\">flowreg</span>"
      "<nav aria-label=\"Main\">{2}</nav>{3}</header><main id=\"main\">"
      "<form id=\"token-form\" class=\"notice\" hidden><label>This server needs its token for live "
      "updates and actions<input id=\"token-input\" type=\"password\" autocomplete=\"off\"></label>"
      "<button type=\"submit\">Use token</button></form>{4}</main>"
      "<script src=\"/static/app.js\" defer></script></body></html>\n",
      escape(title), escape(watch_run), nav,
      live ? "<span id=\"live\" class=\"live\" role=\"status\">live: connecting</span>" : "",
      content);
}

// A run's id as lists show it: its last 12 hex digits, its random tail (a time-ordered id's first
// digits are the same for every run of the same minute), with the whole id as its title.
std::string run_id_cell(const std::string& id) {
  const std::string shown = id.size() > 12 ? id.substr(id.size() - 12) : id;
  return fmt::format("<a class=\"mono\" href=\"/runs/{}\" title=\"{}\">{}</a>", url_part(id),
                     escape(id), escape(shown));
}

// In place of a list of runs that could not be read.
std::string runs_unreadable(std::string_view error) {
  return fmt::format(
      "<p class=\"error\" role=\"alert\" data-runs-error>The runs cannot be read: the database "
      "is unreachable ({}).</p>",
      escape(error));
}

// Recent runs on a flow's card: id and status only.
std::string compact_runs(const json& runs) {
  if (runs.empty()) return "<p class=\"muted\">No runs.</p>";
  std::string items;
  for (const auto& r : runs) {
    const std::string id = str(r, "id");
    items += fmt::format(
        "<li>{} {}</li>", run_id_cell(id),
        status_badge(str(r, "status"), fmt::format(" data-run-status=\"{}\"", escape(id))));
  }
  return "<ul class=\"compact\">" + items + "</ul>";
}

// A run's duration from its summary's duration_ms: "1.234 s", "2 min 3 s"; "" while it runs.
std::string duration_text(const json& run) {
  const auto it = run.find("duration_ms");
  if (it == run.end() || !it->is_number_integer()) return {};
  const std::int64_t ms = std::max<std::int64_t>(0, it->get<std::int64_t>());
  if (ms < 60'000) return fmt::format("{:.3f} s", static_cast<double>(ms) / 1000.0);
  const std::int64_t s = ms / 1000;
  if (s < 3600) return fmt::format("{} min {} s", s / 60, s % 60);
  return fmt::format("{} h {} min", s / 3600, s / 60 % 60);
}

// A JSON value shown by its size and its first kPreviewBytes bytes as text, with `href` the
// whole value's URL (empty: none).
std::string value_preview(const json& value, std::string_view href) {
  if (value.is_null()) return "<pre>null</pre>";
  const std::string text = json_text(value, 2);
  const std::string_view shown = utf8_prefix(text, kPreviewBytes);
  std::string more;
  if (shown.size() < text.size())
    more = fmt::format("<p class=\"muted\" data-preview-cut>… {} more bytes</p>",
                       text.size() - shown.size());
  std::string link;
  if (!href.empty())
    link = fmt::format(" · <a href=\"{}\">the whole value as JSON</a>", escape(href));
  return fmt::format(
      "<p class=\"muted\" data-value-bytes=\"{0}\">{0} bytes{1}</p><pre>{2}</pre>{3}", text.size(),
      link, escape(shown), more);
}

// Seconds since the epoch of an ISO time "YYYY-MM-DDTHH:MM:SSZ".
std::optional<std::int64_t> epoch_seconds(const std::string& iso) {
  std::tm tm{};
  if (iso.size() < 19 || !strptime(iso.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return std::nullopt;
  return static_cast<std::int64_t>(timegm(&tm));
}

// How long ago an ISO time was, in words ("42 s ago", "5 min ago", "3 h ago", "2 d ago"), as a
// <time> whose title is the time itself; static/app.js keeps the words current.
std::string ago_time(const std::string& iso) {
  const auto t = epoch_seconds(iso);
  if (!t) return escape(iso);
  const std::int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  const std::int64_t s = std::max<std::int64_t>(0, now - *t);
  const std::string words = s < 60      ? fmt::format("{} s ago", s)
                            : s < 3600  ? fmt::format("{} min ago", s / 60)
                            : s < 86400 ? fmt::format("{} h ago", s / 3600)
                                        : fmt::format("{} d ago", s / 86400);
  return fmt::format("<time datetime=\"{0}\" title=\"{0}\" data-ago>{1}</time>", escape(iso),
                     words);
}

// A delayed run's time (its start_at, migration 0020) after its status: "for TIME" while it is
// scheduled, "from TIME" once started; nothing for a run started at once.
std::string start_at_text(const json& run) {
  if (!run.contains("start_at") || !run["start_at"].is_string()) return {};
  return fmt::format(" <span class=\"muted\" data-run-start-at>{} {}</span>",
                     str(run, "status") == "scheduled" ? "for" : "from", esc(run, "start_at"));
}

std::string runs_table(const json& runs, bool with_flow) {
  if (runs.empty()) return "<p class=\"muted\">No runs.</p>";
  std::string rows;
  for (const auto& r : runs) {
    const std::string id = str(r, "id");
    rows += fmt::format(
        "<tr><td class=\"mono\">{1}</td>{2}<td>{3}</td>"
        "<td class=\"wide\">{4}</td><td class=\"wide\" data-run-finished=\"{7}\">{5}</td>"
        "<td class=\"wide\">{0}</td><td class=\"error\">{6}</td></tr>",
        duration_text(r), run_id_cell(id),
        with_flow ? fmt::format("<td><a href=\"/flows/{}\">{}</a></td>", url_part(str(r, "flow")),
                                esc(r, "flow"))
                  : std::string(),
        status_badge(str(r, "status"), fmt::format(" data-run-status=\"{}\"", escape(id))) +
            start_at_text(r),
        ago_time(str(r, "created_at")), esc(r, "finished_at"), esc(r, "error"), escape(id));
  }
  return fmt::format(
      "<div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Run</th>{}"
      "<th scope=\"col\">Status</th><th scope=\"col\" class=\"wide\">Created</th>"
      "<th scope=\"col\" class=\"wide\">Finished</th><th scope=\"col\" class=\"wide\">Duration"
      "</th><th scope=\"col\">Error</th></tr></thead>"
      "<tbody>{}</tbody></table></div>",
      with_flow ? "<th scope=\"col\">Flow</th>" : "", rows);
}

std::string dag_img(const json& flow) {
  const std::string slug = str(flow, "slug");
  return fmt::format(
      "<div class=\"dag-wrap\"><img class=\"dag\" src=\"/api/v1/flows/{}/graph.svg\" alt=\"DAG "
      "of flow {}\"></div>",
      url_part(slug), escape(slug));
}

// An input to start a run with, from the flow's input schema: each of its required properties
// with an empty value of the type its schema names (null when it names none); {} without any.
json example_input(const json& schema) {
  json out = json::object();
  if (!schema.is_object() || !schema.contains("required") || !schema["required"].is_array())
    return out;
  for (const auto& name : schema["required"]) {
    if (!name.is_string()) continue;
    const std::string key = name.get<std::string>();
    json type;
    if (schema.contains("properties") && schema["properties"].is_object() &&
        schema["properties"].contains(key) && schema["properties"][key].is_object())
      type = schema["properties"][key].value("type", json());
    const std::string t = type.is_string() ? type.get<std::string>() : std::string();
    if (t == "string")
      out[key] = "";
    else if (t == "integer" || t == "number")
      out[key] = 0;
    else if (t == "boolean")
      out[key] = false;
    else if (t == "array")
      out[key] = json::array();
    else if (t == "object")
      out[key] = json::object();
    else
      out[key] = nullptr;
  }
  return out;
}

// 1234567 as "1,234,567".
std::string grouped(std::int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

// The form that starts a run of `slug` (static/app.js sends it with fetch(): its button is
// disabled until the script enables it, so that without scripts it does nothing).
std::string start_form(const std::string& slug, const json& input_schema) {
  return fmt::format(
      "<h2>Start a run</h2><form id=\"start-run\" class=\"start-run\" "
      "data-start-url=\"/api/v1/flows/{0}/runs\"><label for=\"start-input\">Input (JSON)</label>"
      "<textarea id=\"start-input\" name=\"input\" rows=\"8\" spellcheck=\"false\" "
      "autocomplete=\"off\">{1}</textarea><div class=\"start-row\"><label>Idempotency key "
      "(optional)<input id=\"start-key\" name=\"idempotency_key\" maxlength=\"255\" "
      "autocomplete=\"off\"></label><label>Delay (optional: 30s, 5m, 2h)<input id=\"start-delay\" "
      "name=\"delay\" maxlength=\"20\" autocomplete=\"off\"></label><label>Priority (optional: "
      "-100..100)<input id=\"start-priority\" name=\"priority\" type=\"number\" min=\"-100\" "
      "max=\"100\" step=\"1\" autocomplete=\"off\"></label>"
      "<button type=\"submit\" id=\"start-button\" disabled>"
      "Start</button></div><p class=\"muted\" data-needs-script>Starting a run here needs "
      "JavaScript (or <code>POST /api/v1/flows/{0}/runs</code>).</p><div id=\"start-problem\" "
      "class=\"problem\" role=\"alert\" hidden><p id=\"start-detail\" class=\"error\"></p>"
      "<ul id=\"start-errors\" class=\"error\"></ul></div></form>",
      url_part(slug), escape(json_text(example_input(input_schema), 2)));
}

// A run's DAG with each step's state (GET /api/v1/runs/{id}/graph.svg) and its legend: the
// drawing's colours with the marker and word each state has in it.
std::string run_dag(const std::string& id) {
  std::string legend;
  for (const char* state : kStepStates) {
    const StateStyle& st = state_style(state);
    legend += fmt::format(
        "<li><span class=\"swatch\" style=\"background:{};border-color:{}\">{}</span> {}</li>",
        st.fill, st.border, st.marker, st.word);
  }
  return fmt::format(
      "<h2>DAG</h2><div class=\"dag-wrap\"><img class=\"dag\" src=\"/api/v1/runs/{0}/graph.svg\" "
      "alt=\"DAG of run {1}, each step with its state\" data-run-dag></div>"
      "<ul class=\"legend\" aria-label=\"Step states\">{2}</ul>",
      url_part(id), escape(id), legend);
}

// A page of a step's tasks: those the queue still holds (a finished task leaves it), with links
// to the next and previous pages.
std::string tasks_section(const std::string& id, const json& page) {
  const std::string step = str(page, "step");
  std::string rows;
  for (const auto& t : page["tasks"]) {
    std::string when = esc(t, "next_attempt_at");
    if (!when.empty()) when = "next attempt " + when;
    rows += fmt::format(
        "<tr data-task-index=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td><td class=\"mono\">{3}"
        "</td><td class=\"wide\">{4}</td><td class=\"wide\">{5}{6}</td><td class=\"error\">{7}"
        "</td></tr>",
        esc(t, "index"), status_badge(str(t, "status")), esc(t, "attempt"), esc(t, "worker"),
        esc(t, "started_at"), esc(t, "finished_at"), when, esc(t, "error"));
  }
  const std::string base =
      fmt::format("/runs/{}?step={}&amp;offset=", url_part(id), url_part(step));
  std::string nav;
  if (page["previous_offset"].is_number_integer())
    nav += fmt::format("<a href=\"{}{}#tasks\" rel=\"prev\">Previous</a>", base,
                       page["previous_offset"].get<int>());
  if (page["next_offset"].is_number_integer())
    nav += fmt::format("{}<a href=\"{}{}#tasks\" rel=\"next\">Next</a>", nav.empty() ? "" : " · ",
                       base, page["next_offset"].get<int>());
  return fmt::format(
      "<section id=\"tasks\" data-step-tasks=\"{0}\"><h2>Tasks of step {0}</h2>"
      "<p class=\"muted\">{1} task(s) in all; from task {2} on, the tasks the queue still holds "
      "(queued, started, and a map step's completed tasks while it runs). A finished task leaves "
      "the queue: its attempts and last worker are counted in its step.</p>{3}"
      "<div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Task</th><th scope=\"col\">"
      "Status</th><th scope=\"col\">Attempt</th><th scope=\"col\">Worker</th><th scope=\"col\" "
      "class=\"wide\">Started</th><th scope=\"col\" class=\"wide\">Finished</th><th scope=\"col\">"
      "Error</th></tr></thead><tbody>{4}</tbody></table></div><p class=\"pager\">{5}</p></section>",
      escape(step), esc(page, "task_count"), esc(page, "offset"),
      page["tasks"].empty() ? "<p class=\"muted\">The queue holds none of them.</p>" : "", rows,
      nav);
}

// A schedule's status (app::schedule_status) as a badge coloured by its first word.
std::string schedule_badge(const json& s) {
  const std::string status = str(s, "status");
  std::string kind = status.substr(0, status.find_first_of(" :("));
  if (kind != "paused" && kind != "scheduled" && kind != "due" && kind != "waiting" &&
      kind != "error")
    kind = "other";
  return fmt::format("<span class=\"status s-{}\" data-schedule-status>{}</span>", kind,
                     escape(status));
}

// A schedule's last outcome is shown as an error when it is one.
std::string outcome_class(const json& s) {
  return str(s, "last_outcome").starts_with("error") ? " class=\"error\"" : "";
}

// The buttons of a schedule: forms that POST to the dashboard's /schedules/{name}/{action}, which
// answers with a redirection back (`back`: "page" for the schedule's page, "" for the list).
std::string schedule_actions(const json& s, std::string_view back) {
  const std::string name = url_part(str(s, "name"));
  const std::string query = back.empty() ? std::string() : "?back=" + std::string(back);
  const auto button = [&](std::string_view action, std::string_view label,
                          std::string_view confirm = {}) {
    return fmt::format(
        "<form method=\"post\" action=\"/schedules/{}/{}{}\" class=\"inline\"{}>"
        "<button type=\"submit\" class=\"secondary\" data-schedule-action=\"{}\">{}</button>"
        "</form>",
        name, action, query,
        confirm.empty() ? std::string() : fmt::format(" data-confirm=\"{}\"", escape(confirm)),
        action, label);
  };
  return button(s.value("paused", false) ? "resume" : "pause",
                s.value("paused", false) ? "Resume" : "Pause") +
         button("trigger", "Trigger now") +
         button("delete", "Delete",
                fmt::format("Delete schedule {}? Its runs are kept.", str(s, "name")));
}

// A time of a schedule, or a dash when it has none.
std::string schedule_time(const json& s, const char* key) {
  const std::string t = str(s, key);
  if (t.empty()) return "\u2014";
  return fmt::format("<time datetime=\"{0}\">{0}</time>", escape(t));
}

// The schedules' table: with each one's buttons when `actions`.
std::string schedules_table(const json& schedules, bool actions) {
  std::string rows;
  for (const auto& s : schedules) {
    const std::string name = str(s, "name");
    std::string last_run = "\u2014";
    if (!str(s, "last_run_id").empty())
      last_run =
          run_id_cell(str(s, "last_run_id")) + " " +
          (str(s, "last_run_status").empty() ? std::string("<span class=\"muted\">(pruned)</span>")
                                             : status_badge(str(s, "last_run_status")));
    std::string input = json_text(s.contains("input") ? s["input"] : json::object());
    if (input.size() > 120) input = std::string(utf8_prefix(input, 120)) + "\u2026";
    rows += fmt::format(
        "<tr id=\"schedule-{0}\" data-schedule=\"{1}\"><td><a href=\"/schedules/{0}\">{1}</a>"
        "</td><td><a href=\"/flows/{3}\">{4}</a></td><td><code class=\"cron\">{5}</code> <span "
        "class=\"muted\">{6}</span></td><td>{7}</td><td>{8}</td><td class=\"wide\">{9}</td>"
        "<td>{10}</td><td{2} data-schedule-outcome>{11}</td>"
        "<td data-schedule-counts>{12} / {13}</td><td class=\"wide\"><code>{14}</code></td>{15}"
        "</tr>",
        url_part(name), escape(name), outcome_class(s), url_part(str(s, "flow")), esc(s, "flow"),
        esc(s, "cron"), esc(s, "timezone"), schedule_badge(s),
        s.value("paused", false) ? std::string("<span class=\"muted\">\u2014 (paused)</span>")
                                 : schedule_time(s, "next_fire_at"),
        schedule_time(s, "last_tick_at"), last_run, esc(s, "last_outcome"), esc(s, "fired"),
        esc(s, "skipped"), escape(input),
        actions ? "<td class=\"row-actions\">" + schedule_actions(s, "") + "</td>" : std::string());
  }
  return fmt::format(
      "<div class=\"table-wrap\"><table id=\"schedules\"><thead><tr><th scope=\"col\">Name</th>"
      "<th scope=\"col\">Flow</th><th scope=\"col\">Cron (time zone)</th><th scope=\"col\">"
      "Status</th><th scope=\"col\">Next tick (UTC)</th><th scope=\"col\" class=\"wide\">Last "
      "tick</th><th scope=\"col\">Last run</th><th scope=\"col\">Last outcome</th>"
      "<th scope=\"col\" title=\"ticks that started a run / ticks dropped\">Fired / skipped</th>"
      "<th scope=\"col\" class=\"wide\">Input</th>{}</tr></thead><tbody>{}</tbody></table>"
      "</div>",
      actions ? "<th scope=\"col\">Actions</th>" : "", rows);
}

// A flow page's schedules: flow["schedules"] (with "schedules_more" when there are more), or
// flow["schedules_error"].
std::string flow_schedules(const json& flow) {
  if (flow.contains("schedules_error"))
    return fmt::format(
        "<h2>Schedules</h2><p class=\"error\" role=\"alert\">The schedules cannot be read: {}"
        "</p>",
        esc(flow, "schedules_error"));
  const json& list = flow["schedules"];
  if (list.empty())
    return "<h2>Schedules</h2><p class=\"muted\" data-flow-schedules=\"0\">No schedule starts "
           "this flow.</p>";
  return fmt::format(
      "<h2>Schedules</h2><p class=\"muted\" data-flow-schedules=\"{}\">{}{} schedule(s) start "
      "this flow · <a href=\"/schedules\">all schedules</a></p>{}",
      list.size(), flow.value("schedules_more", false) ? "The first " : "", list.size(),
      schedules_table(list, false));
}

}  // namespace

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

namespace {

// The database's warnings (app::health_report's), each a notice; "" when there are none.
std::string health_warnings(const json& warnings) {
  std::string out;
  if (!warnings.is_array()) return out;
  for (const auto& w : warnings)
    out += fmt::format("<p class=\"error\" role=\"alert\" data-db-warning>{}</p>",
                       escape(w.is_string() ? w.get<std::string>() : std::string()));
  return out;
}

}  // namespace

std::string flows_page(const json& flows, const json& recent_runs, std::string_view runs_error,
                       const json& db_warnings) {
  std::string cards;
  for (const auto& f : flows) {
    const std::string slug = str(f, "slug");
    json runs = json::array();
    for (const auto& r : recent_runs)
      if (str(r, "flow") == slug && runs.size() < 5) runs.push_back(r);
    cards += fmt::format(
        "<section class=\"card\" data-flow=\"{0}\"><h2><a href=\"/flows/{1}\">{0}</a></h2>"
        "<p>{2}</p><p class=\"muted\">module {3} · version <code>{4}</code> · {5} step(s)</p>{6}"
        "<h3>Recent runs</h3>{7}</section>",
        escape(slug), url_part(slug), esc(f, "description"), esc(f, "module"), esc(f, "version"),
        f.contains("steps") ? f["steps"].size() : 0, dag_img(f),
        runs_error.empty() ? compact_runs(runs)
                           : std::string("<p class=\"error\">The runs cannot be read.</p>"));
  }
  if (flows.empty()) cards = "<p class=\"muted\">No flows are registered.</p>";
  return layout("Flows", "/",
                fmt::format("<h1>Flows</h1>{}{}<div class=\"cards\">{}</div>",
                            runs_error.empty() ? std::string() : runs_unreadable(runs_error),
                            health_warnings(db_warnings), cards));
}

namespace {

// A flow's or a step's concurrency and rate limits (flow_json's "concurrency", "rate_limit"),
// after its options: ", at most 2 runs at once per key /customer_id, at most 100 task starts per
// 1s"; "" for none.
std::string concurrency_text(const json& j, std::string_view what) {
  std::string out;
  if (j.contains("concurrency") && j["concurrency"].is_object()) {
    const json& c = j["concurrency"];
    out += fmt::format(
        ", at most {} {} at once{}", esc(c, "limit"), what,
        c.contains("key") ? " per key <code>" + esc(c, "key") + "</code>" : std::string());
  }
  if (j.contains("rate_limit") && j["rate_limit"].is_object()) {
    const json& r = j["rate_limit"];
    out += fmt::format(
        ", at most {} task starts per {}{}", esc(r, "limit"), esc(r, "per"),
        r.contains("key") ? " per key <code>" + esc(r, "key") + "</code>" : std::string());
  }
  return out;
}

}  // namespace

namespace {

// A flow's retention (flow_json's): "completed: 1d, failed: keep; the others: the workers' default"
std::string retention_shown(const json& flow) {
  const json& r = flow.contains("retention") ? flow["retention"] : json(nullptr);
  std::string own;
  if (r.is_object())
    for (const char* status : {"completed", "failed", "cancelled"})
      if (r.contains(status) && r[status].is_string())
        own += fmt::format("{}{}: {}", own.empty() ? "" : ", ", status, esc(r, status));
  return own.empty() ? std::string("the workers' default (worker.retention)")
                     : own + "; the others: the workers' default";
}

}  // namespace

std::string flow_page(const json& flow, const json& runs, std::string_view runs_error) {
  const std::string slug = str(flow, "slug");
  std::string steps;
  for (const auto& s : flow["steps"]) {
    std::string deps;
    for (const auto& d : s["depends_on"])
      deps += (deps.empty() ? "" : ", ") + escape(d.get<std::string>());
    const json& o = s["options"];
    // A sleep or wait step runs no handler: what it sleeps or waits for instead.
    const json& sleep = s.contains("sleep") ? s["sleep"] : json();
    const json& wait = s.contains("wait") ? s["wait"] : json();
    std::string handler =
        sleep.is_object()
            ? (sleep.contains("duration") ? "sleeps " + esc(sleep, "duration")
                                          : "sleeps until the time at <code>" +
                                                esc(sleep, "until") + "</code> of its input")
            : "<code>" + esc(s, "handler") + "</code>";
    if (wait.is_object()) {
      handler = wait.contains("signal")
                    ? "waits for signal <code>" + esc(wait, "signal") + "</code>"
                    : "waits for event <code>" + esc(wait, "event") + "</code>";
      if (wait.contains("match") && wait["match"].is_object())
        for (const auto& [at, from] : wait["match"].items())
          handler += fmt::format(" where <code>{}</code> = <code>{}</code>", escape(at),
                                 escape(from.is_string() ? from.get<std::string>() : from.dump()));
      if (!str(wait, "timeout").empty())
        handler += fmt::format(", {} after {}", wait["default"].is_null() ? "failing" : "default",
                               esc(wait, "timeout"));
    }
    // A flow step's child flow (docs/flows.md#child-flows), linked to its page.
    if (!str(s, "flow").empty())
      handler = fmt::format("starts flow <a href=\"/flows/{}\" data-step-flow>{}</a>{}",
                            url_part(str(s, "flow")), esc(s, "flow"),
                            s.value("map", false) ? " per element" : "");
    // A condition and a trigger (docs/flows.md#conditional-steps).
    if (s.contains("when") && s["when"].is_object())
      handler += "<br><span class=\"muted\" data-step-when>when <code>" +
                 escape(condition_text(s["when"])) + "</code></span>";
    if (str(s, "trigger") == "any") handler += "<br><span class=\"muted\">trigger any</span>";
    steps += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td class=\"wide\">{} attempts, {} → {}, timeout {}, priority {}{}</td></tr>",
        esc(s, "slug"), esc(s, "kind"), handler, deps, esc(o, "max_attempts"), esc(o, "base_delay"),
        esc(o, "max_delay"), esc(o, "timeout"), esc(o, "priority"), concurrency_text(s, "tasks"));
  }
  const json& o = flow["options"];
  std::string content = fmt::format(
      "<h1>Flow {0}</h1><p>{1}</p><dl class=\"meta\"><dt>Module</dt><dd>{2}</dd><dt>Version</dt>"
      "<dd><code>{3}</code></dd><dt>Source</dt><dd>{4}</dd><dt>Options</dt><dd>{5} attempts, "
      "backoff {6} → {7}, timeout {8}, priority "
      "{15}{16}</dd><dt>Retention</dt><dd "
      "data-flow-retention>{17}</dd></dl><h2>DAG</h2>{9}<h2>Steps</h2><div "
      "class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Step</th><th "
      "scope=\"col\">Kind</th><th scope=\"col\">Handler</th><th scope=\"col\">Depends on</th><th "
      "scope=\"col\" class=\"wide\">Options</th></tr></thead><tbody>{10}</tbody></table></div>"
      "{14}<h2>Input schema</h2><pre>{11}</pre><h2>Recent runs</h2>{12}"
      "<p><a href=\"/runs?flow={13}\">All runs of {0}</a></p>",
      escape(slug), esc(flow, "description"), esc(flow, "module"), esc(flow, "version"),
      esc(flow, "source"), esc(o, "max_attempts"), esc(o, "base_delay"), esc(o, "max_delay"),
      esc(o, "timeout"), dag_img(flow), steps,
      flow["input_schema"].is_null() ? "none" : escape(json_text(flow["input_schema"], 2)),
      runs_error.empty() ? runs_table(runs, false) : runs_unreadable(runs_error), url_part(slug),
      start_form(slug, flow["input_schema"]), esc(o, "priority"), concurrency_text(flow, "runs"),
      retention_shown(flow));
  if (flow.contains("schedules") || flow.contains("schedules_error"))
    content += flow_schedules(flow);
  return layout("Flow " + slug, "/", content);
}

std::string runs_page(const json& runs, const json& flows, const json& filter,
                      std::string_view next_before, std::string_view next_after) {
  const std::string flow = str(filter, "flow"), status = str(filter, "status"),
                    id = str(filter, "id"), key = str(filter, "key"), since = str(filter, "since"),
                    until = str(filter, "until"), text = str(filter, "text");
  std::string flow_options = "<option value=\"\">any</option>";
  for (const auto& f : flows) {
    const std::string slug = str(f, "slug");
    flow_options += fmt::format("<option value=\"{0}\"{1}>{0}</option>", escape(slug),
                                slug == flow ? " selected" : "");
  }
  std::string status_options = "<option value=\"\">any</option>";
  for (const char* s : {"scheduled", "started", "completed", "failed", "cancelled"})
    status_options +=
        fmt::format("<option value=\"{0}\"{1}>{0}</option>", s, status == s ? " selected" : "");
  // Paging keeps the filters: newer runs (above this page), the newest, older runs.
  const std::string kept =
      fmt::format("flow={}&amp;status={}&amp;since={}&amp;until={}&amp;text={}", url_part(flow),
                  url_part(status), url_part(since), url_part(until), url_part(text));
  std::vector<std::string> links;
  if (!next_after.empty()) {
    links.push_back(fmt::format("<a href=\"/runs?{}\" rel=\"first\">Newest runs</a>", kept));
    links.push_back(fmt::format("<a href=\"/runs?{}&amp;after={}\" rel=\"prev\">Newer runs</a>",
                                kept, url_part(next_after)));
  }
  if (!next_before.empty())
    links.push_back(fmt::format("<a href=\"/runs?{}&amp;before={}\" rel=\"next\">Older runs</a>",
                                kept, url_part(next_before)));
  std::string more;
  for (const auto& link : links) more += (more.empty() ? "<p class=\"paging\">" : " · ") + link;
  if (!more.empty()) more += "</p>";
  // How many runs match: counted up to a bound ("more than N" past it).
  std::string count;
  if (filter.contains("total") && filter["total"].is_number_integer()) {
    const std::int64_t n = filter["total"].get<std::int64_t>();
    const bool exact = filter.value("total_exact", true);
    count = fmt::format("<p class=\"muted\" data-runs-total=\"{}\">{}{} run{}{}</p>", n,
                        exact ? "" : "more than ", grouped(n), n == 1 && exact ? "" : "s",
                        id.empty() && key.empty() ? "" : " found");
  }
  // On the newest page, runs started since it loaded are announced live (app.js), with a link
  // that shows them: those of the page's flow, when it has one, and only if its status filter
  // lists started runs.
  std::string fresh;
  if (filter.value("newest", false) && (status.empty() || status == "started"))
    fresh = fmt::format(
        "<p class=\"notice\" id=\"new-runs\" data-new-runs-flow=\"{}\" role=\"status\" hidden>"
        "<span id=\"new-runs-count\"></span> · <a href=\"\" id=\"new-runs-show\">show "
        "them</a></p>",
        escape(flow));
  std::string content = fmt::format(
      "<h1>Runs</h1><form class=\"filters\" method=\"get\" action=\"/runs\" role=\"search\">"
      "<label>Flow<select name=\"flow\">{}</select></label><label>Status<select "
      "name=\"status\">{}</select></label><label>Run id<input name=\"id\" value=\"{}\" "
      "size=\"36\" maxlength=\"36\" autocomplete=\"off\" placeholder=\"exact id\"></label>"
      "<label>Idempotency key<input name=\"key\" value=\"{}\" maxlength=\"255\" "
      "autocomplete=\"off\" placeholder=\"exact key\"></label>"
      "<label>Input holds<input name=\"text\" value=\"{}\" maxlength=\"200\" "
      "autocomplete=\"off\" placeholder=\"text, any case\"></label>"
      "<label>Created since<input name=\"since\" value=\"{}\" maxlength=\"40\" size=\"20\" "
      "autocomplete=\"off\" placeholder=\"2h, or 2026-01-02T03:04Z\"></label>"
      "<label>Created until<input name=\"until\" value=\"{}\" maxlength=\"40\" size=\"20\" "
      "autocomplete=\"off\" placeholder=\"UTC time, or 30m\"></label>"
      "<button type=\"submit\">Filter</button></form>{}{}{}{}{}",
      flow_options, status_options, escape(id), escape(key), escape(text), escape(since),
      escape(until), count,
      text.empty() ? std::string()
                   : fmt::format("<p class=\"muted\">Inputs are searched among the newest {} "
                                 "runs of each flow that pass the other filters, in inputs of at "
                                 "most {} KiB as stored.</p>",
                                 grouped(filter.value("text_scan", 0)),
                                 filter.value("text_input_bytes", 0) / 1024),
      fresh, runs_table(runs, true), more);
  return layout("Runs", "/runs", content);
}

namespace {

// The error of an attempt on the run page: its first kAttemptErrorShown bytes.
constexpr std::size_t kAttemptErrorShown = 300;

// The run page's "Attempts": one row per attempt of a page of app::attempt_json's, with links to
// the other pages (attempts_offset=) and to the API's list. Empty when `page` is not an object.
std::string attempts_section(std::string_view id, const json& page) {
  if (!page.is_object() || !page.contains("attempts")) return {};
  std::string rows;
  for (const auto& a : page["attempts"]) {
    std::string error = str(a, "error");
    if (error.size() > kAttemptErrorShown)
      error = std::string(utf8_prefix(error, kAttemptErrorShown)) + "\u2026";
    const std::string process =
        a.contains("process") ? app::task_process_text(a["process"]) : std::string();
    rows += fmt::format(
        "<tr data-attempt=\"{0}/{1}/{2}\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}</td>"
        "<td class=\"mono\">{4}</td><td>{5}</td><td class=\"mono\">{6}</td>"
        "<td data-attempt-process>{7}</td><td class=\"error\">{8}</td></tr>",
        esc(a, "step"), esc(a, "task"), esc(a, "attempt"),
        status_badge(str(a, "outcome"), " data-attempt-outcome"),
        a["started_at"].is_null() ? std::string("\u2014") : esc(a, "started_at"),
        a["duration_ms"].is_null() ? std::string("\u2014") : esc(a, "duration_ms") + " ms",
        a["worker"].is_null() ? std::string("\u2014") : esc(a, "worker"),
        process.empty() ? std::string("\u2014") : escape(process), escape(error));
  }
  const std::int64_t total = page.value("total", std::int64_t{0});
  const std::int64_t offset = page.value("offset", std::int64_t{0});
  const auto shown = static_cast<std::int64_t>(page["attempts"].size());
  std::string pages;
  if (offset > 0)
    pages +=
        fmt::format("<a href=\"/runs/{}?attempts_offset=0#attempts\">first</a> ", url_part(id));
  if (page.contains("next_offset") && page["next_offset"].is_number_integer())
    pages += fmt::format("<a href=\"/runs/{}?attempts_offset={}#attempts\" rel=\"next\">next</a> ",
                         url_part(id), page["next_offset"].get<std::int64_t>());
  std::string count;
  if (shown == total)
    count = fmt::format("{} attempt{}", grouped(total), total == 1 ? "" : "s");
  else if (shown == 0)
    count = fmt::format("none from {} of {} attempts", grouped(offset + 1), grouped(total));
  else
    count = fmt::format("{} to {} of {} attempts", grouped(offset + 1), grouped(offset + shown),
                        grouped(total));
  return fmt::format(
      "<h2 id=\"attempts\">Attempts</h2><p class=\"muted\" data-attempts-total=\"{0}\">{1} · {2}"
      "<a href=\"/api/v1/runs/{3}/attempts?limit=1000\">JSON</a></p>"
      "<div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Step</th>"
      "<th scope=\"col\">Task</th><th scope=\"col\">Attempt</th><th scope=\"col\">Outcome</th>"
      "<th scope=\"col\">Started (UTC)</th><th scope=\"col\">Duration</th>"
      "<th scope=\"col\">Worker</th><th scope=\"col\">Handler process</th>"
      "<th scope=\"col\" class=\"wide\">Error</th></tr></thead>"
      "<tbody>{4}</tbody></table></div>",
      total, count, pages, url_part(id), rows);
}

// A run's concurrency limits (run_json's "concurrency"): the slot it holds, what it waits for.
// A run's parent and child runs (docs/flows.md#child-flows), linked both ways: rows of the run
// page's <dl>.
std::string family_rows(const json& run) {
  std::string out;
  if (run.contains("parent") && run["parent"].is_object()) {
    const json& p = run["parent"];
    out += fmt::format(
        "<dt>Parent</dt><dd><a href=\"/runs/{}\" class=\"mono\" data-run-parent>{}</a> step "
        "<code>{}</code>[{}]</dd>",
        url_part(str(p, "run")), esc(p, "run"), esc(p, "step"), esc(p, "index"));
  }
  if (run.contains("children") && run["children"].is_array() && !run["children"].empty()) {
    std::string items;
    for (const auto& c : run["children"])
      items += fmt::format(
          "<li><a href=\"/runs/{}\" class=\"mono\" data-run-child>{}</a> {} step <code>{}</code>"
          "[{}] {}</li>",
          url_part(str(c, "id")), esc(c, "id"), esc(c, "flow"), esc(c, "step"), esc(c, "index"),
          status_badge(str(c, "status")));
    const auto total = run.value("children_total", std::int64_t{0});
    if (total > static_cast<std::int64_t>(run["children"].size()))
      items +=
          fmt::format("<li class=\"muted\">the first {} of {}</li>", run["children"].size(), total);
    out += "<dt>Children</dt><dd><ul class=\"plain\">" + items + "</ul></dd>";
  }
  return out;
}

std::string concurrency_rows(const json& run) {
  if (!run.contains("concurrency") || !run["concurrency"].is_object()) return {};
  const json& c = run["concurrency"];
  std::string out;
  if (c["held_key"].is_string())
    out += fmt::format("<dt>Concurrency</dt><dd>holds a slot of key <code>{}</code></dd>",
                       escape(c["held_key"].dump()));
  if (c["waiting"].is_object() && str(run, "status") == "started")
    out += fmt::format("<dt>Waiting</dt><dd data-run-waiting>{}</dd>", esc(c["waiting"], "text"));
  return out;
}

}  // namespace

std::string run_page(const json& run, const json& tasks, const json& attempts) {
  const std::string id = str(run, "id");
  // The timeline: each step's bar from its start to its end (or now), on the run's time scale.
  std::int64_t t0 = epoch_seconds(str(run, "created_at")).value_or(0), t1 = t0 + 1;
  const std::int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  for (const auto& s : run["steps"]) {
    if (auto e = epoch_seconds(str(s, "finished_at")))
      t1 = std::max(t1, *e);
    else if (epoch_seconds(str(s, "started_at")))
      t1 = std::max(t1, now);
  }
  std::string steps;
  for (const auto& s : run["steps"]) {
    const std::string slug = str(s, "slug"), status = str(s, "status");
    std::string bar;
    if (auto b = epoch_seconds(str(s, "started_at"))) {
      const std::int64_t e = epoch_seconds(str(s, "finished_at")).value_or(now);
      const double span = static_cast<double>(t1 - t0);
      bar = fmt::format("<span class=\"s-{}\" style=\"left:{:.1f}%;width:{:.1f}%\"></span>",
                        escape(status), 100.0 * static_cast<double>(*b - t0) / span,
                        std::max(1.0, 100.0 * static_cast<double>(e - *b) / span));
    }
    // Waiting for its next attempt: when, and why the last one failed.
    std::string retry;
    if (!str(s, "next_attempt_at").empty())
      retry = fmt::format(
          "<div class=\"retry\" data-step-retry=\"{}\">retrying at <time>{}</time> (attempt {} "
          "failed: <span class=\"error\">{}</span>)</div>",
          escape(slug), esc(s, "next_attempt_at"), esc(s, "failed_attempt"), esc(s, "last_error"));
    // A sleep step's end, or a snoozed task's next run (docs/flows.md#sleep-steps, #snooze).
    else if (!str(s, "waits_until").empty() && str(s, "kind") == "sleep")
      retry = fmt::format(
          "<div class=\"retry\" data-step-sleep=\"{}\">sleeping until <time>{}</time></div>",
          escape(slug), esc(s, "waits_until"));
    // A wait step waiting (docs/flows.md#wait-steps): what for, until when, and for a signal a
    // form that sends it (assets.cpp posts it, its data the wait step's output).
    else if (str(s, "kind") == "wait" && status == "started" && s.contains("waits_for") &&
             s["waits_for"].is_object()) {
      const json& w = s["waits_for"];
      retry =
          fmt::format("<div class=\"retry\" data-step-wait=\"{}\">waiting for {}{}</div>",
                      escape(slug), escape(app::waits_for_text(w)),
                      str(s, "waits_until").empty()
                          ? std::string()
                          : fmt::format(", times out at <time>{}</time>", esc(s, "waits_until")));
      if (w.contains("signal") && w["signal"].is_string()) {
        const std::string name = w["signal"].get<std::string>();
        retry += fmt::format(
            "<form class=\"send-signal\" data-signal-url=\"/api/v1/runs/{0}/signals/{1}\" "
            "data-step-signal=\"{2}\"><label for=\"signal-{2}\">Data (JSON)</label>"
            "<textarea id=\"signal-{2}\" rows=\"2\" spellcheck=\"false\">{{}}</textarea>"
            "<button type=\"submit\">Send signal {3}</button>"
            "<p class=\"error\" data-signal-problem hidden></p></form>",
            url_part(id), url_part(name), escape(slug), escape(name));
      }
    } else if (!str(s, "waits_until").empty() && s.value("snoozes", 0) > 0)
      retry = fmt::format(
          "<div class=\"retry\" data-step-snooze=\"{}\">snoozed ({}x) until <time>{}</time></div>",
          escape(slug), s.value("snoozes", 0), esc(s, "waits_until"));
    steps += fmt::format(
        "<tr><td>{0}</td><td>{1}</td><td>{2}{8}</td><td>{3}</td><td data-step-attempts=\"{0}\">{4}"
        "</td><td class=\"wide\"><div class=\"timeline\" role=\"img\" aria-label=\"{0}: {5} to "
        "{6}\">{7}</div><span class=\"muted\">{5} → {6}</span></td></tr>",
        escape(slug), esc(s, "kind"),
        status_badge(status, fmt::format(" data-step-status=\"{}\"", escape(slug))),
        fmt::format("<a href=\"/runs/{}?step={}#tasks\" data-step-tasks-link=\"{}\">{}</a>",
                    url_part(id), url_part(slug), escape(slug), esc(s, "tasks")),
        esc(s, "attempts"), esc(s, "started_at"), esc(s, "finished_at"), bar, retry);
    if (!s["error"].is_null())
      steps += fmt::format("<tr><td></td><td colspan=\"5\" class=\"error\">error: {}</td></tr>",
                           esc(s, "error"));
    if (!s["output"].is_null())
      steps += fmt::format(
          "<tr><td></td><td colspan=\"5\" data-step-output=\"{0}\"><details><summary>output of {0}"
          "</summary>{1}</details></td></tr>",
          escape(slug), value_preview(s["output"], "/api/v1/runs/" + url_part(id)));
  }
  const std::string status = str(run, "status");
  std::string actions;
  if (status == "started" || status == "scheduled")
    actions = fmt::format(
        "<button type=\"button\" data-action=\"/api/v1/runs/{}/cancel\">Cancel</button>",
        url_part(id));
  else
    actions = fmt::format(
        "<button type=\"button\" data-action=\"/api/v1/runs/{}/retry\">Retry as a new run</button>",
        url_part(id));
  // A failed run may also go on from its failed step, its completed steps' outputs kept.
  if (status == "failed")
    actions += fmt::format(
        "<button type=\"button\" data-action=\"/api/v1/runs/{}/retry?from=failed\">Retry from "
        "the failed step</button>",
        url_part(id));
  std::string content = fmt::format(
      "<h1>Run <span class=\"mono\">{0}</span></h1>"
      "<p id=\"run-ended\" class=\"notice\" hidden>This run has ended: <a href=\"/runs/{1}\">reload"
      "</a> for its outputs.</p>"
      "<dl class=\"meta\"><dt>Flow</dt><dd><a href=\"/flows/{2}\">{3}</a> <code>{4}</code></dd>"
      "<dt>Status</dt><dd>{5}</dd><dt>Created</dt><dd>{6}</dd><dt>Finished</dt><dd>{7}</dd>"
      "<dt>Retry of</dt><dd>{8}</dd><dt>Priority</dt><dd>{17}</dd>{18}"
      "<dt>Error</dt><dd class=\"error\">{9}</dd></dl>"
      "<div class=\"actions\">{10}</div><p id=\"action-error\" class=\"error\" hidden></p>"
      "{14}<h2>Steps</h2><div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Step</th>"
      "<th scope=\"col\">Kind</th><th scope=\"col\">Status</th><th scope=\"col\">Tasks</th>"
      "<th scope=\"col\">Attempts</th><th scope=\"col\" class=\"wide\">Timeline</th></tr></thead>"
      "<tbody>{11}</tbody></table></div>{15}{16}<h2>Input</h2><div data-run-input>{12}</div>"
      "<h2>Output</h2><div data-run-output>{13}</div>",
      escape(id), url_part(id), url_part(str(run, "flow")), esc(run, "flow"), esc(run, "version"),
      status_badge(status, fmt::format(" data-run-status=\"{}\"", escape(id))) + start_at_text(run),
      esc(run, "created_at"), esc(run, "finished_at"),
      run["retry_of"].is_null() ? std::string("—")
                                : fmt::format("<a href=\"/runs/{}\">{}</a>",
                                              url_part(str(run, "retry_of")), esc(run, "retry_of")),
      esc(run, "error"), actions, steps,
      value_preview(run["input"], "/api/v1/runs/" + url_part(id) + "/input"),
      value_preview(run["output"], run["output"].is_null()
                                       ? std::string()
                                       : "/api/v1/runs/" + url_part(id) + "/output"),
      run_dag(id), tasks.is_object() ? tasks_section(id, tasks) : std::string(),
      attempts_section(id, attempts),
      run.contains("priority") && run["priority"].is_number()
          ? esc(run, "priority") + " (the run's own)"
          : std::string("its steps'"),
      concurrency_rows(run) + family_rows(run));
  return layout("Run " + id.substr(0, 8), "/runs", content, id);
}

namespace {

// The database's health (GET /api/v1/health): warnings, what holds VACUUM back, the tables and
// retention.
std::string health_section(const json& h) {
  if (h.is_string())
    return fmt::format(
        "<section id=\"database\"><h2>Database</h2><p class=\"error\">The database's health "
        "cannot be read: {}</p></section>",
        escape(h.get<std::string>()));
  if (!h.is_object()) return {};
  std::string holders;
  for (const auto& x : h["holders"])
    holders += fmt::format(
        "<tr data-db-holder=\"{0}\"><td>{1}</td><td class=\"mono\">{0}</td><td>{2}</td><td>{3}"
        "</td><td>{4}</td><td>{5}</td><td class=\"wide mono\">{6}</td></tr>",
        esc(x, "name"), esc(x, "kind"), esc(x, "application"), esc(x, "xmin_age"),
        x["held_s"].is_number() ? fmt::format("{:.0f} s", x["held_s"].get<double>()) : "",
        esc(x, "state"), esc(x, "query"));
  std::string tables;
  for (const auto& t : h["tables"])
    tables += fmt::format(
        "<tr data-db-table=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3:.0f}%</td>"
        "<td>{4}</td><td>{5}</td><td>{6}</td><td>{7}</td></tr>",
        esc(t, "name"), esc(t, "live_rows"), esc(t, "dead_rows"), t.value("dead_share", 0.0) * 100,
        esc(t, "table_bytes"), esc(t, "index_bytes"), esc(t, "bloat_bytes"),
        t["vacuumed_at"].is_string() ? esc(t, "vacuumed_at") : "never");
  const json& r = h["retention"];
  std::string last = "no round yet";
  if (r["last_round"].is_object()) {
    const json& l = r["last_round"];
    last =
        fmt::format("last round {} by worker <span class=\"mono\">{}</span>: {} run(s) in {} ms{}",
                    esc(l, "at"), esc(l, "worker"), esc(l, "runs"), esc(l, "took_ms"),
                    l["error"].is_string() ? "; failed: " + esc(l, "error") : std::string());
  }
  return fmt::format(
      "<section id=\"database\"><h2>Database</h2>{0}"
      "<h3>Holding back VACUUM</h3>{1}"
      "<h3>Tables</h3><div class=\"table-wrap\"><table id=\"db-tables\"><thead><tr>"
      "<th scope=\"col\">Table</th><th scope=\"col\">Live rows</th><th scope=\"col\">Dead rows"
      "</th><th scope=\"col\">Dead</th><th scope=\"col\">Table bytes</th><th scope=\"col\">"
      "Index bytes</th><th scope=\"col\" title=\"estimated\">Bloat bytes</th><th scope=\"col\">"
      "Last vacuum</th></tr></thead><tbody>{2}</tbody></table></div>"
      "<h3>Retention</h3><p data-retention>{3} round(s), {4} run(s) and {5} event(s) removed in "
      "all; {6}; oldest run kept: {7}.</p></section>",
      h.value("ok", true) ? std::string("<p class=\"muted\" data-db-ok>Nothing holds VACUUM back."
                                        "</p>")
                          : health_warnings(h["warnings"]),
      holders.empty()
          ? std::string("<p class=\"muted\">No session, prepared transaction, slot or standby "
                        "holds a snapshot.</p>")
          : fmt::format("<div class=\"table-wrap\"><table id=\"db-holders\"><thead><tr><th "
                        "scope=\"col\">Kind</th><th scope=\"col\">Name</th><th scope=\"col\">"
                        "Application</th><th scope=\"col\">xmin age</th><th scope=\"col\">Held"
                        "</th><th scope=\"col\">State</th><th scope=\"col\" class=\"wide\">"
                        "Query</th></tr></thead><tbody>{}</tbody></table></div>",
                        holders),
      tables, esc(r, "rounds"), esc(r, "runs_removed"), esc(r, "events_removed"), last,
      r["oldest_run"].is_string() ? esc(r, "oldest_run") : "none");
}

}  // namespace

std::string workers_page(const json& workers, const json& health) {
  std::string rows;
  for (const auto& w : workers) {
    std::string flows;
    for (const auto& f : w["flows"])
      flows += (flows.empty() ? "" : ", ") + esc(f, "slug") + "@" + esc(f, "version");
    const std::string id = str(w, "id"), status = str(w, "status");
    // A worker that stopped or went stale can be forgotten (its row deleted); one that runs not.
    std::string forget;
    if (status == "stopped" || status == "stale")
      forget = fmt::format(
          "<button type=\"button\" data-action=\"/api/v1/workers/{}/forget\">Forget</button>",
          url_part(id));
    rows += fmt::format(
        "<tr data-worker=\"{0}\"><td class=\"mono\">{0}</td><td data-worker-status>{1}</td>"
        "<td data-heartbeat-age=\"{2}\">{3:.1f} s</td><td data-worker-slots>{4} / {5}</td>"
        "<td>{6}</td><td class=\"wide\">{7} (pid {8})</td><td data-handler-processes>{10}</td>"
        "<td>{9}</td></tr>",
        escape(id), status_badge(status), w.value("last_heartbeat_ms_ago", std::int64_t{0}),
        static_cast<double>(w.value("last_heartbeat_ms_ago", std::int64_t{0})) / 1000.0,
        esc(w, "held"), esc(w, "concurrency"), flows.empty() ? "none" : flows, esc(w, "host"),
        esc(w, "pid"), forget,
        w.contains("handler_processes") && w["handler_processes"].is_object()
            ? escape(app::handler_processes_text(w["handler_processes"]))
            : std::string("none (threads)"));
  }
  std::string content =
      workers.empty()
          ? std::string(
                "<h1>Workers</h1><p class=\"muted\">No worker has run on this database.</p>")
          : fmt::format(
                "<h1>Workers</h1><p id=\"action-error\" class=\"error\" hidden></p>"
                "<div class=\"table-wrap\"><table id=\"workers\"><thead><tr><th scope=\"col\">"
                "Worker</th><th scope=\"col\">Status</th><th scope=\"col\">Heartbeat age</th>"
                "<th scope=\"col\" title=\"tasks held / concurrency\">Slots used</th>"
                "<th scope=\"col\">Flows</th><th scope=\"col\" class=\"wide\">Host</th>"
                "<th scope=\"col\">Handler processes</th><th scope=\"col\">Actions</th></tr>"
                "</thead><tbody>{}</tbody></table></div>",
                rows);
  content += health_section(health);
  return layout("Workers", "/workers", content);
}

std::string plugins_page(const json& plugins) {
  std::string rows;
  for (const auto& p : plugins) {
    std::string flows;
    for (const auto& f : p["flows"])
      flows += (flows.empty() ? "" : ", ") + escape(f.get<std::string>());
    const json& e = p["error"];
    // Each handler, with the flows whose steps use it.
    std::string handlers;
    if (p.contains("handler_uses"))
      for (const auto& h : p["handler_uses"]) {
        std::string used;
        for (const auto& f : h["flows"])
          used += fmt::format("{}<a href=\"/flows/{}\">{}</a>", used.empty() ? "" : ", ",
                              url_part(f.get<std::string>()), escape(f.get<std::string>()));
        handlers += fmt::format(
            "<li data-handler=\"{0}\"><code>{0}</code>{1}</li>", esc(h, "handler"),
            used.empty() ? std::string(" <span class=\"muted\">(no flow)</span>") : " — " + used);
      }
    rows += fmt::format(
        "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td class=\"error\">{}</td></tr>",
        esc(p, "file"), esc(p, "module"), status_badge(str(p, "status")), flows,
        handlers.empty() ? std::string() : "<ul class=\"compact\">" + handlers + "</ul>",
        e.is_null() ? std::string() : fmt::format("[{}] {}", esc(e, "stage"), esc(e, "message")));
  }
  std::string content =
      plugins.empty()
          ? std::string(
                "<h1>Plugins</h1><p class=\"muted\">The plugins directory has no files.</p>")
          : fmt::format(
                "<h1>Plugins</h1><div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">"
                "File</th><th scope=\"col\">Module</th><th scope=\"col\">Status</th><th "
                "scope=\"col\">Flows</th><th scope=\"col\">Handlers</th><th scope=\"col\">"
                "Error (stage)</th></tr></thead><tbody>{}"
                "</tbody></table></div>",
                rows);
  return layout("Plugins", "/plugins", content);
}

std::string schedules_page(const json& schedules, bool more, std::string_view notice) {
  std::string content = "<h1>Schedules</h1>";
  if (!notice.empty())
    content += fmt::format("<p class=\"notice\" role=\"status\" data-notice>{}</p>", notice);
  if (schedules.empty())
    content +=
        "<p class=\"muted\">No schedules. Declare them under <code>schedules:</code> in a "
        "configuration file, or create them with <code>flowreg schedules create</code> or "
        "<code>POST /api/v1/schedules</code>.</p>";
  else
    content += fmt::format(
        "<p class=\"muted\" data-schedules-shown=\"{0}\">{1}{0} schedule{2}, by name{3} · "
        "<a href=\"/api/v1/schedules\">JSON</a></p>{4}",
        schedules.size(), more ? "The first " : "", schedules.size() == 1 ? "" : "s",
        more ? " (there are more: see <code>flowreg schedules list</code>)" : "",
        schedules_table(schedules, true));
  return layout("Schedules", "/schedules", content);
}

std::string schedule_page(const json& s, std::string_view notice) {
  const std::string name = str(s, "name");
  std::string content = fmt::format("<h1>Schedule {}</h1>", escape(name));
  if (!notice.empty())
    content += fmt::format("<p class=\"notice\" role=\"status\" data-notice>{}</p>", notice);
  std::string last_run = "\u2014";
  if (!str(s, "last_run_id").empty())
    last_run = run_id_cell(str(s, "last_run_id")) + " " +
               (str(s, "last_run_status").empty() ? std::string("(pruned)")
                                                  : status_badge(str(s, "last_run_status")));
  content += fmt::format(
      "<dl class=\"meta\"><dt>Flow</dt><dd><a href=\"/flows/{0}\">{1}</a></dd><dt>Cron</dt><dd>"
      "<code>{2}</code> in {3}</dd><dt>Status</dt><dd>{4}</dd><dt>Next tick</dt><dd>{5}</dd>"
      "<dt>Last tick</dt><dd>{6}</dd><dt>Last fired</dt><dd>{7}</dd><dt>Last run</dt><dd>{8}</dd>"
      "<dt>Last outcome</dt><dd{22} data-schedule-outcome>{9}</dd><dt>Fired / "
      "skipped</dt><dd>{10} / {11}</dd><dt>Catch-up</dt><dd>{12} (at most {13})</dd><dt>Overlap"
      "</dt><dd>{14}</dd><dt>Time key</dt><dd><code>{15}</code></dd><dt>Source</dt><dd>{16}</dd>"
      "<dt>Created</dt><dd>{17}</dd><dt>Updated</dt><dd>{18}</dd></dl>"
      "<div class=\"actions\">{19}</div><h2>Input</h2><pre data-schedule-input>{20}</pre>"
      "<p><a href=\"/schedules\">All schedules</a> · <a href=\"/api/v1/schedules/{21}\">JSON</a> "
      "· <a href=\"/runs?flow={0}\">Runs of {1}</a></p>",
      url_part(str(s, "flow")), esc(s, "flow"), esc(s, "cron"), esc(s, "timezone"),
      schedule_badge(s), schedule_time(s, "next_fire_at"), schedule_time(s, "last_tick_at"),
      schedule_time(s, "last_fired_at"), last_run, esc(s, "last_outcome"), esc(s, "fired"),
      esc(s, "skipped"), esc(s, "catch_up"), esc(s, "catch_up_max"), esc(s, "overlap"),
      esc(s, "time_key"), esc(s, "source"), esc(s, "created_at"), esc(s, "updated_at"),
      schedule_actions(s, "page"),
      escape(json_text(s.contains("input") ? s["input"] : json::object(), 2)), url_part(name),
      outcome_class(s));
  return layout("Schedule " + name, "/schedules", content);
}

std::string schedule_notice(std::string_view done, std::string_view name, std::string_view run) {
  const std::string who = fmt::format("Schedule <strong>{}</strong>", escape(name));
  if (done == "paused") return who + " paused: its ticks do not fire until it is resumed.";
  if (done == "resumed") return who + " resumed: it fires from its next tick.";
  if (done == "deleted") return who + " deleted (the runs it started are kept).";
  if (done == "triggered" && !run.empty())
    return fmt::format(
        "{} started run <a class=\"mono\" href=\"/runs/{}\" data-notice-run>{}"
        "</a>.",
        who, url_part(run), escape(run));
  return {};
}

std::string error_page(int status, std::string_view title, std::string_view detail) {
  return layout(
      title, "",
      fmt::format("<h1>{} {}</h1><p class=\"error\">{}</p>", status, escape(title), escape(detail)),
      {}, false);
}

}  // namespace flowreg::detail::dashboard
