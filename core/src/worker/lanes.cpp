#include "worker/lanes.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <utility>

#include "logging/json_log.hpp"
#include "metrics/metrics.hpp"

namespace flowreg::detail {

namespace {
using Clock = std::chrono::steady_clock;
// How long a result may wait for others to share its round trip.
constexpr Millis kFlushDelay{2};
// How many results make a round due at once: half a batch.
std::size_t flush_at(const WorkerOptions& o) {
  return static_cast<std::size_t>(std::max(1, o.batch_size / 2));
}
}  // namespace

Lanes::Lanes(const WorkerOptions& options, WorkerStore& store, LaneHost& host)
    : options_(options), store_(store), host_(host) {
  {
    MutexLock lock(mu_);
    next_poll_all_ = Clock::now() + options_.poll_interval;
  }
  const int lanes = std::max(1, options_.lanes);
  for (int i = 0; i < lanes; ++i) threads_.emplace_back([this] { run(); });
}

Lanes::~Lanes() { stop(); }

void Lanes::stop() {
  {
    MutexLock lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

std::size_t Lanes::size() const {
  MutexLock lock(mu_);
  return entries_.size();
}

std::shared_ptr<const Lanes::Flow> Lanes::add(FlowDef def, std::shared_ptr<FlowState> state,
                                              ExitSignal exit) {
  auto flow = std::make_shared<const Flow>(Flow{std::move(def), std::move(state), std::move(exit)});
  // The waker first: from the moment the flow is queued, a lane may make its first round trip and
  // its handlers may finish, and their wake-ups must reach the lanes. (Set after, they went to no
  // waker, and the flow slept until the next poll of idle flows with its results unrecorded.) A
  // wake-up before the entry exists finds none and is not needed: the entry is queued below, and
  // its first round takes whatever the state holds then.
  flow->state->set_waker([this, raw = flow.get()] { wake(raw); }, flush_at(options_));
  {
    MutexLock lock(mu_);
    Entry& e = entries_[flow.get()];
    e.flow = flow;
    e.backoff = options_.reconnect_min;
    enqueue(e);
  }
  cv_.notify_one();
  return flow;
}

void Lanes::remove(const std::shared_ptr<const Flow>& flow) {
  flow->state->set_waker({});
  MutexLock lock(mu_);
  auto it = entries_.find(flow.get());
  if (it == entries_.end()) return;
  while (it->second.in_flight > 0) {
    cv_.wait(lock);
    it = entries_.find(flow.get());
    if (it == entries_.end()) return;
  }
  entries_.erase(it);
  std::erase(ready_, flow.get());
  std::erase(timed_, flow.get());
}

void Lanes::wake(const Flow* flow) {
  {
    MutexLock lock(mu_);
    auto it = entries_.find(flow);
    if (it == entries_.end() || it->second.queued) return;
    enqueue(it->second);
  }
  cv_.notify_one();
}

void Lanes::enqueue(Entry& e) {
  if (e.queued) return;
  e.queued = true;
  ready_.push_back(e.flow.get());
}

void Lanes::set_timer(Entry& e, SteadyTime at) {
  e.wake_at = std::min(e.wake_at, at);
  if (!e.timed) {
    e.timed = true;
    timed_.push_back(e.flow.get());
  }
}

void Lanes::fire_timers(SteadyTime now) {
  for (auto it = timed_.begin(); it != timed_.end();) {
    Entry& e = entries_.at(*it);
    if (e.wake_at > now) {
      ++it;
      continue;
    }
    enqueue(e);
    // One timer per flow, at the earliest of what it waits for: a flush or a backoff may fire it
    // before the claim of a delayed retry falls due (next_poll). That claim keeps its timer.
    if (e.next_poll != SteadyTime::max() && e.next_poll > now) {
      e.wake_at = e.next_poll;
      ++it;
      continue;
    }
    e.wake_at = SteadyTime::max();
    e.timed = false;
    it = timed_.erase(it);
  }
}

SteadyTime Lanes::earliest() const {
  SteadyTime at = host_.draining() ? SteadyTime::max() : next_poll_all_;
  for (const Flow* flow : timed_) at = std::min(at, entries_.at(flow).wake_at);
  return at;
}

Lanes::Work Lanes::next_work(SteadyTime now) {
  Work work;
  if (!host_.draining() && now >= next_poll_all_) {
    next_poll_all_ = now + options_.poll_interval;
    for (const auto& [raw, e] : entries_)
      if (e.defined && !e.failed && now >= e.retry_at &&
          e.last_claim + options_.poll_interval <= now)
        work.flows.push_back(e.flow);
    if (!work.flows.empty()) {
      for (const auto& flow : work.flows) ++entries_.at(flow.get()).in_flight;
      work.kind = Work::Kind::poll;
      return work;
    }
  }
  while (!ready_.empty()) {
    const Flow* raw = ready_.front();
    ready_.pop_front();
    Entry& e = entries_.at(raw);
    e.queued = false;
    if (e.failed) continue;
    if (!e.defined) {
      if (e.defining) continue;  // the lane storing it queues it when done
      if (now < e.retry_at) {
        set_timer(e, e.retry_at);
        continue;
      }
      e.defining = true;
      ++e.in_flight;
      work.kind = Work::Kind::define;
      work.flows.push_back(e.flow);
      return work;
    }
    if (now < e.retry_at) {
      set_timer(e, e.retry_at);
      continue;
    }
    const bool poll_due = now >= e.next_poll;
    SteadyTime flush_at_time = SteadyTime::max();
    auto round = e.flow->state->take_round(poll_due, flush_at(options_), kFlushDelay,
                                           host_.draining(), flush_at_time);
    if (!round) {
      if (flush_at_time != SteadyTime::max()) set_timer(e, flush_at_time);
      continue;
    }
    if (round->stop) continue;
    if (round->want_claim) e.next_poll = SteadyTime::max();  // its outcome re-arms it
    ++e.in_flight;
    work.kind = Work::Kind::trip;
    work.flows.push_back(e.flow);
    work.round = std::move(*round);
    return work;
  }
  return work;
}

void Lanes::run() {
  for (;;) {
    Work work;
    {
      MutexLock lock(mu_);
      for (;;) {
        if (stopping_) return;
        const auto now = Clock::now();
        fire_timers(now);
        work = next_work(now);
        if (work.kind != Work::Kind::none) break;
        const SteadyTime until = earliest();
        if (until == SteadyTime::max())
          cv_.wait(lock);
        else
          cv_.wait_until(lock, until);
      }
    }
    Done done;
    switch (work.kind) {
      case Work::Kind::define:
        done = define(*work.flows.front());
        break;
      case Work::Kind::trip:
        done = trip(*work.flows.front(), work.round);
        break;
      case Work::Kind::poll:
        done = poll(work.flows);
        break;
      case Work::Kind::none:
        break;
    }
    std::vector<std::pair<ExitSignal, Error>> exits;
    std::vector<std::shared_ptr<FlowState>> claim_again;
    {
      MutexLock lock(mu_);
      settle(work, done, Clock::now(), exits, claim_again);
    }
    cv_.notify_all();  // remove() waits for in_flight; a timer or the queue may have changed
    // With no lock held: waking a state calls back into wake(); an exit signal reaches a
    // supervisor, which may remove the flow (from another thread).
    for (const auto& state : claim_again) state->want_claim();
    for (auto& [exit, error] : exits) exit(std::move(error));
  }
}

Lanes::Done Lanes::define(const Flow& flow) {
  const logging::LogScope log_scope({options_.worker_id, flow.state->key().slug, {}, {}, {}});
  Done done;
  auto stored = store_.upsert_flow(flow.def, flow.state->key().version);
  if (!stored) {
    if (stored.error().code == Errc::unavailable)
      spdlog::debug("worker {}: {}: {}", options_.worker_id, flow.state->label(),
                    stored.error().format());
    done.error = std::move(stored.error());
    return done;
  }
  return done;
}

Lanes::Done Lanes::trip(const Flow& flow, FlowState::Round& round) {
  Done done;
  const auto& state = flow.state;
  const logging::LogScope log_scope({options_.worker_id, state->key().slug, {}, {}, {}});
  // A round trip that records results claims too, whatever is free: it costs nothing more.
  const bool flushing = !round.completions.empty() || !round.failures.empty();
  const int limit = round.want_claim || (flushing && !host_.draining())
                        ? host_.acquire_slots(options_.batch_size, state)
                        : 0;
  if (!flushing && limit == 0) return done;  // no room: the host wakes it when there is
  const FlowKey keys[] = {state->key()};
  Result<WorkResult> result = [&]() -> Result<WorkResult> {
    if (options_.round_trip_probe)
      if (auto probe = options_.round_trip_probe(state->key()); !probe)
        return tl::unexpected(std::move(probe.error()));
    const auto sent = Clock::now();
    auto r = store_.work(options_.worker_id, round.completions, round.failures, keys, limit,
                         options_.lease);
    metrics::record_round_trip(Clock::now() - sent, limit > 0, flushing);
    return r;
  }();
  if (!result) {
    host_.release_slots(limit);
    state->put_back(std::move(round.completions), std::move(round.failures));
    done.error = std::move(result.error());
    return done;
  }
  state->forget(round.completions, round.failures);
  for (TaskId id : result->rejected)
    spdlog::info(
        "worker {}: {}: the result of task {} was not recorded (its attempt is no longer "
        "current)",
        options_.worker_id, state->label(), id);
  for (TaskId id : result->refused)
    spdlog::warn(
        "worker {}: {}: the database cannot store the output of task {}: the task failed "
        "permanently (see its error)",
        options_.worker_id, state->label(), id);
  for (TaskId id : result->unusable)
    spdlog::warn(
        "worker {}: {}: claimed task {} cannot be run (its step or run was deleted, or its input "
        "is not JSON): the task failed permanently (see its error)",
        options_.worker_id, state->label(), id);
  done.claimed = static_cast<int>(result->claimed.size());
  done.full = limit > 0 && done.claimed == limit;
  done.claimed_for = round.want_claim;
  done.next_due_in = result->next_due_in;
  host_.release_slots(limit - done.claimed);
  host_.dispatch(state, std::move(result->claimed));
  return done;
}

Lanes::Done Lanes::poll(const std::vector<std::shared_ptr<const Flow>>& flows) {
  Done done;
  std::vector<FlowKey> keys;
  std::map<std::pair<std::string, std::string>, const Flow*> by_key;
  for (const auto& flow : flows) {
    const FlowKey& key = flow->state->key();
    if (!host_.may_claim(*flow->state)) continue;  // at its share of stuck handler threads
    if (options_.round_trip_probe)
      if (auto probe = options_.round_trip_probe(key); !probe) {
        done.probe_failed.emplace_back(flow.get(), std::move(probe.error()));
        continue;
      }
    keys.push_back(key);
    by_key.emplace(std::make_pair(key.slug, key.version), flow.get());
  }
  if (keys.empty()) return done;
  const int limit = host_.acquire_slots(options_.batch_size, nullptr);
  if (limit == 0) return done;  // busy: the flows are claimed for when capacity frees up
  const auto sent = Clock::now();
  auto result = store_.work(options_.worker_id, {}, {}, keys, limit, options_.lease);
  metrics::record_round_trip(Clock::now() - sent, true, false);
  if (!result) {
    host_.release_slots(limit);
    spdlog::debug("worker {}: polling {} flow versions: {}", options_.worker_id, keys.size(),
                  result.error().format());
    return done;  // each flow meets the error in its own round trips
  }
  done.claimed = static_cast<int>(result->claimed.size());
  done.full = done.claimed == limit;
  host_.release_slots(limit - done.claimed);
  std::vector<Release> strays;
  for (auto& task : result->claimed) {
    auto it = by_key.find({task.flow_slug, task.flow_version});
    if (it == by_key.end()) {  // not a flow asked for: give it back untouched
      strays.push_back(Release{task.id, task.attempt, false});
      host_.release_slots(1);
      continue;
    }
    if (std::find(done.claimed_by.begin(), done.claimed_by.end(), it->second) ==
        done.claimed_by.end())
      done.claimed_by.push_back(it->second);
    std::vector<ClaimedTask> one;  // as claimed: tasks of several flows stay in their order
    one.push_back(std::move(task));
    host_.dispatch(it->second->state, std::move(one));
  }
  if (!strays.empty()) (void)store_.release(options_.worker_id, strays);
  return done;
}

void Lanes::settle(const Work& work, Done& done, SteadyTime now,
                   std::vector<std::pair<ExitSignal, Error>>& exits,
                   std::vector<std::shared_ptr<FlowState>>& claim_again) {
  for (const auto& flow : work.flows) --entries_.at(flow.get()).in_flight;
  if (work.kind == Work::Kind::poll) {
    for (const Flow* flow : done.claimed_by) {
      Entry& e = entries_.at(flow);
      e.last_claim = now;
      if (done.full) claim_again.push_back(e.flow->state);  // there may be more
    }
    for (auto& [flow, error] : done.probe_failed) {
      Entry& e = entries_.at(flow);
      if (e.failed) continue;
      e.failed = true;
      exits.emplace_back(e.flow->exit, std::move(error));
    }
    return;
  }
  if (work.kind != Work::Kind::define && work.kind != Work::Kind::trip) return;
  Entry& e = entries_.at(work.flows.front().get());
  const std::string& label = e.flow->state->label();
  if (work.kind == Work::Kind::define) e.defining = false;
  if (e.failed) return;  // reported already (by another lane's round trip)
  if (done.error && done.error->code == Errc::unavailable) {
    if (work.kind == Work::Kind::trip && !e.outage)
      spdlog::warn("worker {}: {}: database unreachable, retrying: {}", options_.worker_id, label,
                   done.error->format());
    e.outage = work.kind == Work::Kind::trip || e.outage;
    e.retry_at = now + e.backoff;
    e.backoff = std::min(e.backoff * 2, options_.reconnect_max);
    set_timer(e, e.retry_at);
    return;
  }
  if (done.error) {
    e.failed = true;
    exits.emplace_back(e.flow->exit, std::move(*done.error));
    return;
  }
  if (e.outage) spdlog::info("worker {}: {}: database reachable again", options_.worker_id, label);
  e.outage = false;
  e.backoff = options_.reconnect_min;
  if (work.kind == Work::Kind::define) {
    e.defined = true;
    enqueue(e);  // its first claim (a new state wants one)
    return;
  }
  if (done.claimed > 0) e.last_claim = now;
  // Results the round left (over kMaxRecordBytes) may wake no one: the flow looks at them again.
  if (e.flow->state->has_results()) enqueue(e);
  if (done.full) {
    claim_again.push_back(e.flow->state);  // there may be more: it queues again, at the back
  } else if (done.claimed_for && done.next_due_in) {
    e.next_poll = now + *done.next_due_in + Millis(1);
    set_timer(e, e.next_poll);
  }
}

}  // namespace flowreg::detail
