#pragma once
// The threads a worker runs handlers on: a fixed pool with one FIFO queue.
//
// Jobs that have not started can be taken back (graceful shutdown gives their tasks back to the
// database at once); running jobs cannot be interrupted (a handler is plugin code: there is no
// safe way to stop a thread), so shutdown waits for them until a deadline and then leaves them.
//
// Thread-safety: every member function may be called concurrently.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace flowreg::detail {

class HandlerPool {
 public:
  struct Job {
    std::function<void()> run;     // on a pool thread
    std::function<void()> cancel;  // instead of run, when taken back before it started
    // After run, on its thread, when run threw: the exception's text. An exception from fail
    // itself is dropped (nothing thrown by a job ends the process).
    std::function<void(std::string what)> fail;
  };

  explicit HandlerPool(int threads);
  // Closes and cancels queued jobs. Waits for running jobs, unless an earlier close_and_wait()
  // expired: then the threads still running are detached (they own the pool's shared state, so
  // they finish safely; their jobs must own what they use).
  ~HandlerPool();
  HandlerPool(const HandlerPool&) = delete;
  HandlerPool& operator=(const HandlerPool&) = delete;

  // Queues a job; false (the job is not run, nor cancelled) once closed.
  bool submit(Job job);
  // Queues jobs together (one lock; each idle thread woken once): all of them, or none (false)
  // once closed.
  bool submit_all(std::vector<Job> jobs);
  // Removes the queued jobs (not started) and cancels them; their count.
  std::size_t cancel_queued();
  // Jobs running now.
  int running() const;
  std::size_t queued() const;

  // Stops accepting jobs, cancels the queued ones, and waits until the running ones end or the
  // deadline passes. True when every thread ended (and was joined).
  bool close_and_wait(std::chrono::steady_clock::time_point deadline);

 private:
  struct Shared {
    mutable std::mutex mu;
    std::condition_variable work_cv;  // jobs queued or closing
    std::condition_variable idle_cv;  // a job or a thread ended
    std::deque<Job> queue;
    int running = 0;
    int exited = 0;
    bool closed = false;
    bool expired = false;  // a close_and_wait() deadline passed
  };
  static void thread_main(const std::shared_ptr<Shared>& shared);
  static void run_job(Job& job) noexcept;

  std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  std::vector<std::thread> threads_;
};

}  // namespace flowreg::detail
