#include "metrics/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <utility>

#include "util/strings.hpp"

namespace flowreg::detail::metrics {

namespace {

constexpr std::string_view kOverflow = "_overflow";

std::string_view type_name(Type type) {
  switch (type) {
    case Type::counter:
      return "counter";
    case Type::gauge:
      return "gauge";
    case Type::histogram:
      return "histogram";
  }
  return "untyped";
}

// HELP text: backslash and newline escaped.
std::string escape_help(std::string_view text) {
  std::string out;
  for (const char c : utf8_valid(text)) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// A sample value: integers as integers, others in their shortest form that reads back the same.
std::string number(double v) { return fmt::format("{}", v); }

// `name{labels} value` (no braces without labels).
void sample(std::string& out, std::string_view name, std::string_view labels,
            std::string_view value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

}  // namespace

std::string escape_label_value(std::string_view text) {
  std::string out;
  for (const char c : utf8_valid(text)) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// ---- Histogram

Histogram::Histogram(std::span<const double> bounds)
    : bounds_(bounds.begin(), bounds.end()),
      counts_(new std::atomic<std::uint64_t>[bounds.size() + 1]) {
  for (std::size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) noexcept {
  // The first bound >= v (Prometheus buckets are "less than or equal").
  const auto i = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) -
                                          bounds_.begin());
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::vector<std::uint64_t> Histogram::counts() const {
  std::vector<std::uint64_t> out(bounds_.size() + 1);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = counts_[i].load(std::memory_order_relaxed);
  return out;
}

// ---- Families

FamilyBase::FamilyBase(std::string name, std::string help, Type type,
                       std::vector<std::string> labels)
    : name_(std::move(name)), help_(std::move(help)), type_(type), labels_(std::move(labels)) {}

std::string FamilyBase::key_of(std::span<const std::string_view> values, bool overflow) const {
  std::string labels;
  for (std::size_t i = 0; i < labels_.size(); ++i) {
    if (i > 0) labels += ',';
    labels += labels_[i];
    labels += "=\"";
    labels += overflow ? std::string(kOverflow)
                       : escape_label_value(i < values.size() ? values[i] : std::string_view());
    labels += '"';
  }
  return labels;
}

void* FamilyBase::series(std::span<const std::string_view> values) {
  std::string key = key_of(values, false);
  MutexLock lock(mu_);
  auto it = series_.find(key);
  if (it != series_.end()) return it->second.get();
  if (series_.size() >= kMaxSeries) key = key_of(values, true);
  auto& slot = series_[key];
  if (!slot) slot = make();
  return slot.get();
}

void FamilyBase::retain(std::span<const std::string> values) {
  std::set<std::string> keep;
  for (const auto& v : values) {
    const std::string_view one = v;
    keep.insert(key_of(std::span(&one, 1), false));
  }
  MutexLock lock(mu_);
  std::erase_if(series_, [&](const auto& entry) { return !keep.contains(entry.first); });
}

void FamilyBase::render(std::string& out) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name_, escape_help(help_), name_,
                     type_name(type_));
  MutexLock lock(mu_);
  for (const auto& [labels, series] : series_) render_series(out, labels, series.get());
}

template <>
std::shared_ptr<void> Family<Counter>::make() const {
  return std::make_shared<Counter>();
}
template <>
void Family<Counter>::render_series(std::string& out, const std::string& labels,
                                    const void* series) const {
  sample(out, name(), labels, std::to_string(static_cast<const Counter*>(series)->value()));
}

template <>
std::shared_ptr<void> Family<Gauge>::make() const {
  return std::make_shared<Gauge>();
}
template <>
void Family<Gauge>::render_series(std::string& out, const std::string& labels,
                                  const void* series) const {
  sample(out, name(), labels, number(static_cast<const Gauge*>(series)->value()));
}

template <>
std::shared_ptr<void> Family<Histogram>::make() const {
  return std::make_shared<Histogram>(bounds_);
}
template <>
void Family<Histogram>::render_series(std::string& out, const std::string& labels,
                                      const void* series) const {
  const auto& h = *static_cast<const Histogram*>(series);
  const auto counts = h.counts();
  const std::string prefix = labels.empty() ? std::string() : labels + ",";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    const std::string le = i < h.bounds().size() ? number(h.bounds()[i]) : std::string("+Inf");
    sample(out, name() + "_bucket", prefix + "le=\"" + le + "\"", std::to_string(cumulative));
  }
  sample(out, name() + "_sum", labels, number(h.sum()));
  sample(out, name() + "_count", labels, std::to_string(cumulative));
}

// ---- Registry

template <class T>
Family<T>& Registry::add(std::unique_ptr<Family<T>> family) {
  MutexLock lock(mu_);
  for (const auto& f : families_)
    if (f->name() == family->name()) {
      auto* same = dynamic_cast<Family<T>*>(f.get());
      if (same) return *same;
    }
  auto& ref = *family;
  families_.push_back(std::move(family));
  return ref;
}

Family<Counter>& Registry::counter(std::string name, std::string help,
                                   std::vector<std::string> labels) {
  return add(std::make_unique<Family<Counter>>(std::move(name), std::move(help), Type::counter,
                                               std::move(labels)));
}

Family<Gauge>& Registry::gauge(std::string name, std::string help,
                               std::vector<std::string> labels) {
  return add(std::make_unique<Family<Gauge>>(std::move(name), std::move(help), Type::gauge,
                                             std::move(labels)));
}

Family<Histogram>& Registry::histogram(std::string name, std::string help,
                                       std::vector<std::string> labels,
                                       std::span<const double> bounds) {
  return add(std::make_unique<Family<Histogram>>(
      std::move(name), std::move(help), Type::histogram, std::move(labels),
      std::vector<double>(bounds.begin(), bounds.end())));
}

std::shared_ptr<void> Registry::on_scrape(Hook hook) {
  int id = 0;
  {
    MutexLock lock(hooks_mu_);
    id = next_hook_++;
    hooks_.emplace(id, std::move(hook));
  }
  return std::shared_ptr<void>(nullptr, [this, id](void*) {
    MutexLock lock(hooks_mu_);
    hooks_.erase(id);
  });
}

std::string Registry::render() const {
  {
    MutexLock lock(hooks_mu_);
    for (const auto& [id, hook] : hooks_) hook();
  }
  std::string out;
  MutexLock lock(mu_);
  for (const auto& f : families_) f->render(out);
  return out;
}

// ---- The process's metrics

Registry& default_registry() {
  // Never destroyed: threads still recording while the process exits find it alive.
  static Registry* registry = [] {
    auto* r = new Registry();
    r->gauge("flowreg_build_info", "The flowreg build this process runs (always 1).", {"version"})
        .with({FLOWREG_VERSION})
        .set(1);
    return r;
  }();
  return *registry;
}

namespace {

struct Families {
  Family<Histogram>& task_seconds = default_registry().histogram(
      "flowreg_task_duration_seconds",
      "Run time of step handlers in this worker, per flow and step (handler entered to returned).",
      {"flow", "step"}, kTaskSecondsBuckets);
  Family<Histogram>& latency_seconds = default_registry().histogram(
      "flowreg_task_start_latency_seconds",
      "Time from a task's claim by this worker to its handler being entered (waiting for a "
      "handler thread), per flow and step.",
      {"flow", "step"}, kLatencySecondsBuckets);
  Histogram& claim = default_registry()
                         .histogram("flowreg_claim_round_trip_seconds",
                                    "Round trips of this worker's flow loops to PostgreSQL that "
                                    "claimed tasks (those that also recorded results included).",
                                    {}, kLatencySecondsBuckets)
                         .with({});
  Histogram& completion =
      default_registry()
          .histogram("flowreg_completion_round_trip_seconds",
                     "Round trips of this worker's flow loops to PostgreSQL that recorded results "
                     "(completions and failures; those that also claimed included).",
                     {}, kLatencySecondsBuckets)
          .with({});
  Counter& reconnects =
      default_registry()
          .counter("flowreg_database_reconnects_total",
                   "Connections to PostgreSQL this process found broken and replaced (run-store "
                   "connections and the task listener).",
                   {})
          .with({});
  Counter& plugin_loads = default_registry()
                              .counter("flowreg_plugin_loads_total",
                                       "Plugin files this process loaded and registered.", {})
                              .with({});
  Family<Counter>& plugin_failures = default_registry().counter(
      "flowreg_plugin_load_failures_total",
      "Plugin files this process refused, by the stage that refused them.", {"stage"});
  Gauge& flows = default_registry()
                     .gauge("flowreg_registry_flows", "Flows registered in this process.", {})
                     .with({});
  Histogram& process_cpu = default_registry()
                               .histogram("flowreg_handler_process_cpu_seconds",
                                          "CPU time of each task run in a handler process "
                                          "(isolation: process), user and system.",
                                          {}, kTaskSecondsBuckets)
                               .with({});
  Histogram& process_rss = default_registry()
                               .histogram("flowreg_handler_process_peak_rss_bytes",
                                          "Peak resident memory of the handler process, read "
                                          "after each task it ran (isolation: process).",
                                          {}, kRssBytesBuckets)
                               .with({});
  Family<Gauge>& processes = default_registry().gauge(
      "flowreg_handler_processes",
      "Handler processes of this worker (isolation: process): alive (started and not ended) and "
      "busy (running a task).",
      {"state"});
  Counter& processes_started = default_registry()
                                   .counter("flowreg_handler_processes_started_total",
                                            "Handler processes started, replacements included.", {})
                                   .with({});
  Family<Counter>& process_ends = default_registry().counter(
      "flowreg_handler_process_ends_total",
      "Handler processes that ended during a task, by why: crashed (a signal or an exit), "
      "timed_out (killed at the task's timeout), limit (SIGXCPU, or SIGKILL from outside such as "
      "the out-of-memory killer), broken (killed for a broken channel or an output over the "
      "limit).",
      {"reason"});
  Histogram& schedule_lag =
      default_registry()
          .histogram("flowreg_schedule_fire_lag_seconds",
                     "Time from a schedule's tick to the commit of the run it started, per tick "
                     "fired by this worker (a tick caught up after an outage is as late as it was "
                     "missed).",
                     {}, kFireLagSecondsBuckets)
          .with({});
  Family<Counter>& schedule_firings = default_registry().counter(
      "flowreg_schedule_firings_total",
      "Firings of due schedules by this worker, by outcome: started (the tick's runs started), "
      "skipped (overlap: skip, or every tick missed), waiting (overlap: queue, its last run still "
      "runs) and error (no run could start; the schedule's last_outcome says why).",
      {"outcome"});
  // Every outcome is rendered from the start, at 0.
  const bool schedule_outcomes = [this] {
    for (std::string_view o : {"started", "skipped", "waiting", "error"})
      schedule_firings.with({o});
    return true;
  }();
};

Families& families() {
  static Families* f = new Families();
  return *f;
}

}  // namespace

namespace {
std::atomic<bool> recording_on{true};
}

void set_recording(bool on) noexcept { recording_on.store(on, std::memory_order_relaxed); }
bool recording() noexcept { return recording_on.load(std::memory_order_relaxed); }

std::string exposition() {
  families();  // every family of this file is rendered, recorded into or not
  return default_registry().render();
}

StepSeries* step_series(std::string_view flow, std::string_view step) {
  // One StepSeries per (flow, step), kept for the process's life like the series they point to.
  static AnnotatedMutex mu;
  static auto* known = new std::map<std::string, std::unique_ptr<StepSeries>>();
  auto& f = families();
  MutexLock lock(mu);
  auto& slot = (*known)[std::string(flow) + '\n' + std::string(step)];
  if (!slot)
    slot.reset(
        new StepSeries{f.task_seconds.with({flow, step}), f.latency_seconds.with({flow, step})});
  return slot.get();
}

Histogram& claim_round_trip() { return families().claim; }
Histogram& completion_round_trip() { return families().completion; }
Counter& database_reconnects() { return families().reconnects; }
Counter& plugin_loads() { return families().plugin_loads; }
Counter& plugin_load_failures(std::string_view stage) {
  return families().plugin_failures.with({stage});
}
Gauge& registered_flows() { return families().flows; }
Histogram& handler_process_cpu() { return families().process_cpu; }
Histogram& handler_process_rss() { return families().process_rss; }
Gauge& handler_processes(std::string_view state) { return families().processes.with({state}); }
Counter& handler_processes_started() { return families().processes_started; }
Counter& handler_process_ends(std::string_view reason) {
  return families().process_ends.with({reason});
}

Histogram& schedule_fire_lag() { return families().schedule_lag; }
Counter& schedule_firings(std::string_view outcome) {
  return families().schedule_firings.with({outcome});
}

}  // namespace flowreg::detail::metrics
