#pragma once
// The process's Prometheus metrics. exposition() renders every metric of this process in the
// Prometheus text exposition format (version 0.0.4), ready to serve at /metrics.
//
// Recording is lock-free: a series (Counter, Gauge, Histogram) is a few relaxed atomics, found
// once in its Family (under the family's mutex) and then kept by the caller; a Family keeps every
// series it made until it dies, so the references stay valid. Rendering takes each family's mutex
// to walk its series and reads the atomics: a scrape sees each value as it was at some moment of
// the scrape (a histogram's count is the sum of its buckets as read, so it always equals its +Inf
// bucket).
//
// Label cardinality is bounded: a family holds at most kMaxSeries label sets; further ones share
// one series whose every label value is "_overflow" (no slug starts with '_').
//
// Thread-safety: every member function may be called concurrently.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/thread_annotations.hpp"

namespace flowreg::detail::metrics {

// Content-Type of exposition()'s text.
inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

// Everything this process records, rendered for a scrape (the default registry's text).
std::string exposition();

class Counter {
 public:
  void inc(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class Gauge {
 public:
  void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations in fixed buckets (upper bounds, increasing), plus their sum.
class Histogram {
 public:
  explicit Histogram(std::span<const double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void observe(double v) noexcept;
  // Non-cumulative counts per bucket (the last one is +Inf) and the sum, as read now.
  std::vector<std::uint64_t> counts() const;
  double sum() const noexcept { return sum_.load(std::memory_order_relaxed); }
  const std::vector<double>& bounds() const noexcept { return bounds_; }

 private:
  const std::vector<double> bounds_;
  const std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

// Bucket bounds in seconds.
// clang-format off
inline constexpr double kTaskSecondsBuckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                 1, 2.5, 5, 10, 30, 60, 300, 1800};
// Memory of a handler process: 16 MiB to 4 GiB.
inline constexpr double kRssBytesBuckets[] = {16.0 * (1 << 20), 32.0 * (1 << 20), 64.0 * (1 << 20),
                                              128.0 * (1 << 20), 256.0 * (1 << 20),
                                              512.0 * (1 << 20), 1024.0 * (1 << 20),
                                              2048.0 * (1 << 20), 4096.0 * (1 << 20)};
inline constexpr double kLatencySecondsBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
// A schedule's tick to the commit of its run: milliseconds when a worker waits for it, up to an
// hour for ticks caught up after an outage.
inline constexpr double kFireLagSecondsBuckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                   2.5, 5, 10, 30, 60, 300, 3600};
// clang-format on

// A duration in seconds, for observe().
template <class Rep, class Period>
double seconds(std::chrono::duration<Rep, Period> d) noexcept {
  return std::chrono::duration<double>(d).count();
}

enum class Type { counter, gauge, histogram };

// The metrics of one name: HELP, TYPE, label names, and one series per label set.
class FamilyBase {
 public:
  static constexpr std::size_t kMaxSeries = 2000;

  FamilyBase(std::string name, std::string help, Type type, std::vector<std::string> labels);
  virtual ~FamilyBase() = default;
  FamilyBase(const FamilyBase&) = delete;
  FamilyBase& operator=(const FamilyBase&) = delete;

  const std::string& name() const noexcept { return name_; }
  // Appends HELP, TYPE and every series.
  void render(std::string& out) const;
  // Removes the series whose label value is not one of `values`, for a family of one label whose
  // every value is set anew at each scrape (a label value that went away, such as a deleted
  // schedule, stops being rendered). REQUIRES: nobody keeps a reference to a removed series.
  void retain(std::span<const std::string> values);

 protected:
  // The series of `values` (one per label name), made on first use. REQUIRES: as many values as
  // label names.
  void* series(std::span<const std::string_view> values);
  virtual std::shared_ptr<void> make() const = 0;
  // The rendered label text of `values` ("a=\"x\",b=\"y\""), or of the overflow series.
  std::string key_of(std::span<const std::string_view> values, bool overflow) const;
  virtual void render_series(std::string& out, const std::string& labels,
                             const void* series) const = 0;

 private:
  const std::string name_, help_;
  const Type type_;
  const std::vector<std::string> labels_;
  mutable AnnotatedMutex mu_;
  // Rendered label text ("a=\"x\",b=\"y\"") -> series.
  std::map<std::string, std::shared_ptr<void>> series_ FLOWREG_GUARDED_BY(mu_);
};

template <class T>
class Family final : public FamilyBase {
 public:
  Family(std::string name, std::string help, Type type, std::vector<std::string> labels,
         std::vector<double> bounds = {})
      : FamilyBase(std::move(name), std::move(help), type, std::move(labels)),
        bounds_(std::move(bounds)) {}

  T& with(std::initializer_list<std::string_view> values) {
    return *static_cast<T*>(series(std::span(values.begin(), values.size())));
  }
  T& with(std::span<const std::string_view> values) { return *static_cast<T*>(series(values)); }

 private:
  std::shared_ptr<void> make() const override;
  void render_series(std::string& out, const std::string& labels,
                     const void* series) const override;
  const std::vector<double> bounds_;  // histograms
};

// A set of families, rendered in the order they were added, and hooks run before each rendering
// (they refresh values read from elsewhere, such as the run store).
class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Family<Counter>& counter(std::string name, std::string help, std::vector<std::string> labels);
  Family<Gauge>& gauge(std::string name, std::string help, std::vector<std::string> labels);
  Family<Histogram>& histogram(std::string name, std::string help, std::vector<std::string> labels,
                               std::span<const double> bounds);

  // `hook` runs at the start of every render() until the returned token dies (its destruction
  // waits for a run in progress). Hooks run one at a time. REQUIRES: the token dies before this
  // registry.
  using Hook = std::function<void()>;
  std::shared_ptr<void> on_scrape(Hook hook);

  std::string render() const;

 private:
  template <class T>
  Family<T>& add(std::unique_ptr<Family<T>> family);

  mutable AnnotatedMutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_ FLOWREG_GUARDED_BY(mu_);
  mutable AnnotatedMutex hooks_mu_;  // held while hooks run
  std::map<int, Hook> hooks_ FLOWREG_GUARDED_BY(hooks_mu_);
  int next_hook_ FLOWREG_GUARDED_BY(hooks_mu_) = 0;
};

// `text` as a label value: valid UTF-8 (U+FFFD for invalid bytes), with backslash, double quote
// and newline escaped as the exposition format requires.
std::string escape_label_value(std::string_view text);

// ---- The process's metrics (in the default registry, rendered by exposition()).
Registry& default_registry();

// Whether the worker records its per-task and per-round-trip metrics (default: yes). `flowreg
// worker` without --metrics turns it off before its loops start: step_series() is then not
// attached to handlers and round trips are not observed. Other metrics are always kept.
void set_recording(bool on) noexcept;
bool recording() noexcept;

// Per (flow, step): looked up once by the worker (each step's handler keeps its pointer).
struct StepSeries {
  Histogram& task_seconds;     // the handler's run time
  Histogram& latency_seconds;  // claimed -> handler entered
};
StepSeries* step_series(std::string_view flow, std::string_view step);

Histogram& claim_round_trip();       // round trips that claimed tasks
Histogram& completion_round_trip();  // round trips that recorded results
// Observes a flow loop's round trip in either or both.
inline void record_round_trip(std::chrono::steady_clock::duration took, bool claimed,
                              bool recorded) noexcept {
  if (!recording()) return;
  if (claimed) claim_round_trip().observe(seconds(took));
  if (recorded) completion_round_trip().observe(seconds(took));
}
Counter& database_reconnects();
Counter& plugin_loads();
Counter& plugin_load_failures(std::string_view stage);
Gauge& registered_flows();
// Handler processes (isolation: process; worker/handler_process.hpp).
Histogram& handler_process_cpu();                  // seconds per task
Histogram& handler_process_rss();                  // bytes, after each task
Gauge& handler_processes(std::string_view state);  // "alive", "busy"
Counter& handler_processes_started();
Counter& handler_process_ends(std::string_view reason);  // crashed, timed_out, limit, broken
// Schedules fired by this worker's scheduler (schedule/scheduler.hpp).
Histogram& schedule_fire_lag();                       // seconds, tick -> its run committed
Counter& schedule_firings(std::string_view outcome);  // started, skipped, waiting, error

}  // namespace flowreg::detail::metrics
