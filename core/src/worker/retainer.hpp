#pragma once
// Retention from a worker (docs/operations.md#retention): a thread that, every interval, runs a
// round of RunStore::retain on a connection of its own. A round deletes the ended runs whose time
// is up (their flow's retention, else the worker's defaults), then old events and idle rate-limit
// buckets, in transactions of at most RunStore::kRetainBatch runs, under a session advisory lock:
// whatever the number of workers, one round runs at a time, and a worker killed mid-round
// releases the lock with its connection, leaving every batch whole (each is one transaction).
//
// Thread-safety: stop() may be called from any thread; it is joined there (and by the destructor).

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "flowreg/flow.hpp"

namespace flowreg::detail {

class Retainer {
 public:
  Retainer(std::string conninfo, std::string worker_id, RetentionSettings settings);
  ~Retainer();  // stop()
  Retainer(const Retainer&) = delete;
  Retainer& operator=(const Retainer&) = delete;

  void stop();

 private:
  void run();

  const std::string conninfo_;
  const std::string worker_id_;
  const RetentionSettings settings_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace flowreg::detail
