#include "server/event_hub.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <deque>
#include <map>
#include <random>
#include <set>
#include <utility>

#include "app/forms.hpp"
#include "store/run_store.hpp"
#include "util/json_text.hpp"

namespace flowreg::detail {

namespace {

std::string new_epoch() {
  std::random_device rd;
  return fmt::format("{:08x}", rd());
}

// What the hub knows of a run it tracks: its flow and each step's last status and attempts.
struct Tracked {
  std::string flow;
  std::map<std::string, std::pair<std::string, int>> steps;
  std::uint64_t order = 0;  // when it was first seen: the oldest is dropped first
};

}  // namespace

EventHub::EventHub(std::string conninfo)
    : conninfo_(std::move(conninfo)), epoch_(new_epoch()), thread_([this] { run(); }) {}

EventHub::~EventHub() { stop(); }

void EventHub::stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::pair<std::uint64_t, bool> EventHub::resume_point(std::string_view last) const {
  MutexLock lock(mu_);
  const std::uint64_t now = last_seq_;
  const auto colon = last.find(':');
  if (last.empty() || colon == std::string_view::npos || last.substr(0, colon) != epoch_)
    return {now, false};
  std::uint64_t seq = 0;
  for (char c : last.substr(colon + 1)) {
    if (c < '0' || c > '9' || seq > (std::uint64_t{1} << 60)) return {now, false};
    seq = seq * 10 + static_cast<std::uint64_t>(c - '0');
  }
  const std::uint64_t oldest = ring_.empty() ? now + 1 : ring_.front().seq;
  if (seq > now || seq + 1 < oldest) return {now, false};
  return {seq, true};
}

std::optional<std::vector<HubEvent>> EventHub::wait_after(std::uint64_t after,
                                                          Millis timeout) const {
  MutexLock lock(mu_);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!stopping_ && last_seq_ <= after)
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  if (stopping_) return std::nullopt;
  std::vector<HubEvent> out;
  for (const auto& e : ring_)
    if (e.seq > after) out.push_back(e);
  return out;
}

void EventHub::publish(std::string type, std::string run_id, std::string flow, std::string data) {
  {
    MutexLock lock(mu_);
    ring_.push_back(HubEvent{++last_seq_, std::move(type), std::move(run_id), std::move(flow),
                             std::move(data)});
    while (ring_.size() > kRingSize) ring_.pop_front();
  }
  cv_.notify_all();
}

void EventHub::run() {
  std::optional<Listener> listener;
  std::optional<RunStore> store;
  std::map<RunId, Tracked> tracked;
  std::uint64_t order = 0;
  // Runs whose end was published (the last kMaxTracked): a later notification of theirs repeats
  // nothing.
  std::set<RunId> ended;
  std::deque<RunId> ended_order;
  auto next_poll = std::chrono::steady_clock::now();
  const auto stopping = [this] {
    MutexLock lock(mu_);
    return stopping_;
  };

  // Publishes the step changes of `id` since the last read; false when the run is gone.
  const auto diff_steps = [&](const RunId& id, Tracked& t) {
    auto steps = store->run_steps(id);
    if (!steps) return true;
    if (steps->empty()) return false;
    for (const auto& s : *steps) {
      auto& last = t.steps[s.slug];
      if (last.first == s.status && last.second == s.attempts) continue;
      last = {s.status, s.attempts};
      app::json data = {{"run", id},
                        {"flow", t.flow},
                        {"step", s.slug},
                        {"status", s.status},
                        {"tasks", s.task_count},
                        {"attempts", s.attempts},
                        {"error", s.error ? app::json(*s.error) : app::json(nullptr)}};
      publish("step", id, t.flow, json_text(data));
    }
    return true;
  };
  // Reads run `id` (after a notification, or to find a missed end): step changes, then the run's.
  // `start`: the notification was its start's. A run that ended before it was read (a fast worker)
  // still gets its start published first: a page counts the runs started since it loaded by it.
  const auto on_run = [&](const RunId& id, bool start) {
    if (ended.contains(id)) return;
    auto run = store->get_run(id);
    if (!run || !*run) {
      if (run) tracked.erase(id);
      return;
    }
    const RunInfo& info = **run;
    auto [it, fresh] = tracked.try_emplace(id);
    if (fresh) {
      it->second.flow = info.flow_slug;
      it->second.order = ++order;
    }
    const std::string status(to_string(info.status));
    if (fresh) {
      app::json data = {
          {"id", id},
          {"flow", info.flow_slug},
          {"status", app::run_status(start ? RunStatus::started : info.status, info.scheduled)}};
      publish("run", id, info.flow_slug, json_text(data));
    }
    diff_steps(id, it->second);
    if (info.status != RunStatus::started) {
      {
        app::json data = {
            {"id", id},
            {"flow", info.flow_slug},
            {"status", status},
            {"error", info.error ? app::json(*info.error) : app::json(nullptr)},
            {"finished_at",
             info.finished_at ? app::json(app::iso_time(*info.finished_at)) : app::json(nullptr)}};
        publish("run", id, info.flow_slug, json_text(data));
      }
      tracked.erase(id);
      ended.insert(id);
      ended_order.push_back(id);
      if (ended_order.size() > kMaxTracked) {
        ended.erase(ended_order.front());
        ended_order.pop_front();
      }
    }
    while (tracked.size() > kMaxTracked) {
      auto oldest = tracked.begin();
      for (auto i = tracked.begin(); i != tracked.end(); ++i)
        if (i->second.order < oldest->second.order) oldest = i;
      tracked.erase(oldest);
    }
  };

  while (!stopping()) {
    if (!store || store->connection_lost()) {
      store.reset();
      if (auto s = RunStore::connect(conninfo_)) store.emplace(std::move(*s));
    }
    if (!listener || listener->connection_lost()) {
      const bool again = listener.has_value();
      listener.reset();
      if (auto l = Listener::connect(conninfo_, {std::string(kRunsChannel)})) {
        listener.emplace(std::move(*l));
        // Ends missed while the connection was down: read every tracked run again.
        if (again && store) {
          std::vector<RunId> ids;
          for (const auto& [id, t] : tracked) ids.push_back(id);
          for (const auto& id : ids) on_run(id, false);
        }
      }
    }
    if (!store || !listener) {
      MutexLock lock(mu_);
      if (!stopping_) cv_.wait_for(lock, Millis{500});
      continue;
    }
    auto note = listener->wait(Millis{100});
    if (note && *note) {
      const std::string& payload = (*note)->payload;
      const auto space = payload.find(' ');
      on_run(payload.substr(0, space),
             space != std::string::npos && payload.substr(space + 1) == "started");
      continue;
    }
    if (std::chrono::steady_clock::now() >= next_poll) {
      next_poll = std::chrono::steady_clock::now() + kPollInterval;
      for (auto it = tracked.begin(); it != tracked.end();)
        it = diff_steps(it->first, it->second) ? std::next(it) : tracked.erase(it);
    }
  }
}

}  // namespace flowreg::detail
