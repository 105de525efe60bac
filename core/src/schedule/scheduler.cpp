#include "schedule/scheduler.hpp"

#include <date/date.h>
#include <date/tz.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <map>
#include <stdexcept>

#include "flowreg/validate.hpp"
#include "metrics/metrics.hpp"
#include "schedule/cron.hpp"
#include "store/run_store.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::schedule {

namespace {

using namespace std::chrono_literals;

// Ticks counted one by one to find the latest due one, before searching by windows instead.
constexpr int kCountedTicks = 10'000;

struct Timing {
  Cron cron;
  const date::time_zone* zone;
};

Result<Timing> timing_of(const ScheduleDef& def) {
  auto cron = Cron::parse(def.cron);
  if (!cron) return tl::unexpected(std::move(cron.error()));
  auto zone = find_zone(def.timezone);
  if (!zone) return tl::unexpected(std::move(zone.error()));
  return Timing{std::move(*cron), *zone};
}

}  // namespace

std::string rfc3339(TimePoint t) {
  return date::format("%Y-%m-%dT%H:%M:%SZ", std::chrono::floor<std::chrono::seconds>(t));
}

Result<TimePoint> next_tick(const ScheduleDef& def, TimePoint after) {
  auto timing = timing_of(def);
  if (!timing) return tl::unexpected(std::move(timing.error()));
  auto next = timing->cron.next_after(after, *timing->zone);
  if (!next)
    return make_error(Errc::invalid_argument,
                      fmt::format("schedule '{}': '{}' fires at no time in {}", def.name, def.cron,
                                  def.timezone));
  return *next;
}

nlohmann::json tick_input(const ScheduleDef& def, TimePoint tick) {
  nlohmann::json input = def.input.is_object() ? def.input : nlohmann::json::object();
  if (!def.time_key.empty()) input[def.time_key] = rfc3339(tick);
  return input;
}

Result<FiringPlan> plan_firing(const ScheduleDef& def, TimePoint next_fire_at, TimePoint now) {
  auto timing = timing_of(def);
  if (!timing) return tl::unexpected(std::move(timing.error()));
  const auto after = [&](TimePoint t) { return timing->cron.next_after(t, *timing->zone); };
  FiringPlan plan;
  if (next_fire_at > now) {
    plan.next = next_fire_at;
    return plan;
  }
  const bool all = def.catch_up == "all";
  const std::size_t keep = all ? static_cast<std::size_t>(std::max(def.catch_up_max, 1)) : 1;
  // The due ticks, oldest first, counted one by one up to kCountedTicks; past that (a schedule of
  // every second after a long downtime), the count stops and the latest ticks are found from a
  // window before now.
  std::deque<TimePoint> due{next_fire_at};
  int counted = 1;
  std::optional<TimePoint> t = after(next_fire_at);
  for (; t && *t <= now && counted < kCountedTicks; t = after(*t), ++counted) {
    due.push_back(*t);
    if (due.size() > keep) {
      due.pop_front();
      ++plan.missed;
    }
  }
  if (t && *t <= now) {
    // Too many to count: the latest `keep` ticks lie in a window before now, widened until it
    // holds as many (or reaches the ticks already seen).
    for (const std::chrono::seconds window :
         {std::chrono::seconds(1min), std::chrono::seconds(1h), std::chrono::seconds(24h),
          std::chrono::seconds(24h * 32), std::chrono::seconds(24h * 366),
          std::chrono::seconds(24h * 366 * 5)}) {
      const TimePoint from = std::max(*t - 1s, now - window);
      std::deque<TimePoint> recent;
      for (auto u = after(from); u && *u <= now; u = after(*u)) {
        recent.push_back(*u);
        if (recent.size() > keep) recent.pop_front();
      }
      if (recent.size() >= keep || from == *t - 1s) {
        plan.missed += static_cast<int>(due.size());  // at least: the count stopped
        due.assign(recent.begin(), recent.end());
        break;
      }
    }
    t = after(now);
  }
  plan.next = t;
  if (def.catch_up == "none" && !due.empty() && now - due.back() > kOnTimeGrace) {
    plan.missed += static_cast<int>(due.size());
    due.clear();
  }
  if (def.overlap != "allow" && due.size() > 1) {
    // One at a time: the oldest fires; the schedule stays due for the others.
    plan.next = due[1];
    due.resize(1);
  }
  plan.ticks.assign(due.begin(), due.end());
  return plan;
}

namespace {

// The firing of a due schedule of a flow served in version `flow`, at the server's `now`, its
// runs' inputs checked by the flow's input_problem.
detail::ScheduleFiring firing_of(const detail::DueSchedules::Due& d, const ServedFlow& flow,
                                 TimePoint now) {
  detail::ScheduleFiring firing;
  firing.name = d.def.name;
  firing.expected = d.next_fire_at;
  firing.version = flow.version;
  auto plan = plan_firing(d.def, d.next_fire_at, now);
  if (!plan) {
    // Checked when stored: a time zone the system no longer knows, say. Tried again in an hour.
    firing.ticks = {d.next_fire_at};
    firing.inputs = {nlohmann::json::object()};
    firing.next = now + std::chrono::hours(1);
    firing.error = plan.error().message;
    return firing;
  }
  firing.ticks = plan->ticks;
  firing.next = plan->next;
  firing.missed = plan->missed;
  for (const auto tick : firing.ticks) {
    auto input = tick_input(d.def, tick);
    if (flow.input_problem && !firing.error)
      if (auto problem = flow.input_problem(input))
        firing.error =
            fmt::format("the input of its run is refused by flow '{}': {}", d.def.flow, *problem);
    firing.inputs.push_back(std::move(input));
  }
  if (firing.ticks.empty()) {
    // Every due tick missed (catch_up: none): recorded as the first of them, counted once.
    firing.ticks = {d.next_fire_at};
    firing.inputs = {nlohmann::json::object()};
    firing.missed = std::max(plan->missed - 1, 0);
    firing.skip = "its ticks were more than 60 s late (catch_up: none)";
  }
  return firing;
}

}  // namespace

// The scheduler thread's connection, made again after a failure.
struct Scheduler::Store {
  std::optional<detail::RunStore> store;
};

Scheduler::Scheduler(SchedulerOptions options, ServedFlows served)
    : options_(std::move(options)), served_(std::move(served)), store_(std::make_unique<Store>()) {
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::wake() {
  {
    std::lock_guard lock(mu_);
    woken_ = true;
  }
  cv_.notify_all();
}

void Scheduler::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Scheduler::run() {
  Millis backoff{100};
  for (;;) {
    std::chrono::steady_clock::time_point until;
    try {
      until = round();
      backoff = Millis(100);
    } catch (const std::exception& e) {
      spdlog::warn("worker {}: schedules: {}; trying again in {} ms", options_.worker_id,
                   detail::utf8_valid(e.what()), backoff.count());
      store_->store.reset();
      until = std::chrono::steady_clock::now() + backoff;
      backoff = std::min(backoff * 2, Millis(5'000));
    }
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, until, [this] { return stopping_ || woken_; });
    if (stopping_) return;
    woken_ = false;
  }
}

std::chrono::steady_clock::time_point Scheduler::round() {
  const auto poll = std::chrono::steady_clock::now() + options_.poll_interval;
  std::map<std::string, ServedFlow> flows;
  for (auto& f : served_()) {
    auto slug = f.def.slug;
    flows.emplace(std::move(slug), std::move(f));
  }
  if (flows.empty()) return poll;
  if (!store_->store) {
    auto connected = detail::RunStore::connect(options_.conninfo);
    if (!connected) throw std::runtime_error(connected.error().message);
    store_->store.emplace(std::move(*connected));
  }
  auto& store = *store_->store;
  std::vector<std::string> slugs;
  for (const auto& [slug, f] : flows) slugs.push_back(slug);
  std::vector<detail::ScheduleFiring> firings;
  const auto plan_all = [&](const detail::DueSchedules& due) {
    firings.clear();
    for (const auto& d : due.due) {
      const auto& flow = flows.at(d.def.flow);
      firings.push_back(firing_of(d, flow, due.now));
    }
    return firings;
  };
  detail::DueSchedules due;
  auto fired = store.fire_due_schedules(slugs, options_.batch, due, plan_all);
  if (!fired && fired.error().code == Errc::unavailable)
    throw std::runtime_error(fired.error().message);
  if (!fired) {
    // The batch refused as a whole (a run's idempotency key used with another input, by a
    // schedule deleted and made again; a value the server refuses): each firing again on its own,
    // one that fails recorded as its error, so that one schedule never holds up the others.
    spdlog::warn("worker {}: schedules: a batch of {} failed ({}); firing them one by one",
                 options_.worker_id, firings.size(), fired.error().message);
    std::vector<detail::ScheduleFired> each;
    for (auto& firing : firings) {
      auto one = store.fire_schedules({&firing, 1});
      if (!one && one.error().code != Errc::unavailable && !firing.error) {
        firing.error = one.error().message;
        one = store.fire_schedules({&firing, 1});
      }
      if (!one) {
        if (one.error().code == Errc::unavailable) throw std::runtime_error(one.error().message);
        spdlog::warn("worker {}: schedule '{}': {}", options_.worker_id, firing.name,
                     one.error().message);
        continue;
      }
      each.insert(each.end(), one->begin(), one->end());
    }
    fired = std::move(each);
  }
  // Committed now: each started tick's lag, on this host's clock (the ticks are not the
  // database's).
  const auto committed = std::chrono::system_clock::now();
  std::map<std::string_view, const detail::ScheduleFiring*> by_name;
  for (const auto& firing : firings) by_name.emplace(firing.name, &firing);
  int moved = 0, started = 0, runs = 0;  // schedules fired, skipped or advanced; started; runs
  for (const auto& f : *fired) {
    if (f.outcome != "waiting" && f.outcome != "gone") ++moved;
    if (f.outcome != "gone") detail::metrics::schedule_firings(f.outcome).inc();
    const auto it = by_name.find(f.name);
    if (it == by_name.end()) continue;
    const detail::ScheduleFiring& firing = *it->second;
    if (f.outcome == "started") {
      ++started;
      runs += f.started;
      for (const auto tick : firing.ticks)
        detail::metrics::schedule_fire_lag().observe(
            std::max(0.0, detail::metrics::seconds(committed - tick)));
    }
    if (f.outcome == "error")
      spdlog::warn("worker {}: schedule '{}' fired no run: {}", options_.worker_id, f.name,
                   firing.error.value_or(""));
  }
  if (started > 0)
    spdlog::info("worker {}: {} schedule(s) started {} run(s)", options_.worker_id, started, runs);
  // A full batch that moved: more may be due, read again at once. (A batch of schedules waiting
  // for their last runs, overlap: queue, moves nothing: read again at the poll interval.)
  if (static_cast<int>(due.due.size()) >= options_.batch && moved > 0)
    return std::chrono::steady_clock::now();
  auto until = poll;
  if (due.next) {
    const auto in = *due.next - due.now;
    until =
        std::min(until, std::chrono::steady_clock::now() +
                            std::chrono::duration_cast<std::chrono::steady_clock::duration>(in));
  }
  return until;
}

}  // namespace flowreg::schedule
