#include "worker/retainer.hpp"

#include <spdlog/spdlog.h>

#include <random>

#include "store/run_store.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

Retainer::Retainer(std::string conninfo, std::string worker_id, RetentionSettings settings)
    : conninfo_(std::move(conninfo)),
      worker_id_(std::move(worker_id)),
      settings_(settings),
      thread_([this] { run(); }) {}

Retainer::~Retainer() { stop(); }

void Retainer::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Retainer::run() {
  // The first round after a tenth of the interval and a random part of it, so that workers
  // started together do not all try at once; then one every interval.
  std::mt19937_64 rng(std::random_device{}());
  const auto interval = settings_.interval;
  auto wait = Millis(interval.count() / 10 +
                     std::uniform_int_distribution<std::int64_t>(0, interval.count() / 10)(rng));
  const auto stopping = [this] {
    std::lock_guard lock(mu_);
    return stopping_;
  };
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, wait, [this] { return stopping_; })) return;
    }
    wait = interval;
    // A connection per round, closed after it: a worker holds none between rounds.
    auto round = [&]() -> Result<RetentionRound> {
      auto store = RunStore::connect(conninfo_);
      if (!store) return tl::unexpected(std::move(store.error()));
      return store->retain(settings_, worker_id_, RunStore::kRetainBatch, stopping);
    }();
    if (!round) {
      spdlog::warn("worker {}: retention: {}", worker_id_, utf8_valid(round.error().message));
      continue;
    }
    if (round->runs > 0 || round->events > 0)
      spdlog::info("worker {}: retention removed {} run(s) and {} event(s) in {} ms", worker_id_,
                   round->runs, round->events, round->took.count());
  }
}

}  // namespace flowreg::detail
