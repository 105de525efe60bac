#pragma once
// The changes /events streams: run and step state changes, in the order this process saw them.
//
// A thread LISTENs on the runs channel ("<run id> <status>" when a run starts and when it ends).
// On each notification it reads the run and its steps and publishes, in this order, the steps'
// changes since it last read them and then the run's new status. Step changes between a run's
// start and end raise no notification: the thread reads the steps of the runs it saw start
// (at most kMaxTracked at once, the oldest dropped first) every kPollInterval. When the LISTEN
// connection breaks, it reconnects and reads again every run it tracks (a missed end is found so).
//
// Each event gets a sequence number of this process; the last kRingSize events are kept, so that a
// client that reconnects with Last-Event-ID "<epoch>:<seq>" of this process is sent what it missed.
// An older id, or one of another process (another epoch), cannot be resumed: the store keeps no
// history of changes. The stream then begins with a `reset` event: reload the state.
//
// Thread-safety: every member function may be called concurrently.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/options.hpp"
#include "flowreg/thread_annotations.hpp"

namespace flowreg::detail {

struct HubEvent {
  std::uint64_t seq = 0;
  std::string type;  // "run" or "step"
  std::string run_id, flow;
  std::string data;  // JSON text
};

class EventHub {
 public:
  static constexpr std::size_t kRingSize = 4096;
  static constexpr std::size_t kMaxTracked = 256;
  static constexpr Millis kPollInterval{500};

  // Starts the thread at once.
  explicit EventHub(std::string conninfo);
  EventHub(const EventHub&) = delete;
  EventHub& operator=(const EventHub&) = delete;
  ~EventHub();  // stop()

  void stop();
  // This process's epoch: part of every event id.
  const std::string& epoch() const noexcept { return epoch_; }

  // Where a stream that sent Last-Event-ID `last` resumes: the sequence number after which to
  // send events, and whether that id could be resumed at all (else: begin with a reset event).
  std::pair<std::uint64_t, bool> resume_point(std::string_view last) const;
  // Events after `after`, waiting up to `timeout` when there is none; nullopt once stopping.
  std::optional<std::vector<HubEvent>> wait_after(std::uint64_t after, Millis timeout) const;

 private:
  void run();
  void publish(std::string type, std::string run_id, std::string flow, std::string data);

  const std::string conninfo_;
  const std::string epoch_;
  mutable AnnotatedMutex mu_;
  mutable std::condition_variable_any cv_;
  std::deque<HubEvent> ring_ FLOWREG_GUARDED_BY(mu_);
  std::uint64_t last_seq_ FLOWREG_GUARDED_BY(mu_) = 0;
  bool stopping_ FLOWREG_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace flowreg::detail
