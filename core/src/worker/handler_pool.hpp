#pragma once
// The threads a worker runs handlers on: a pool with one FIFO queue, which keeps `threads` of them
// able to run jobs.
//
// Jobs that have not started can be taken back (graceful shutdown gives their tasks back to the
// database at once); running jobs cannot be interrupted (a handler is plugin code: there is no
// safe way to stop a thread), so shutdown waits for them until a deadline and then leaves them.
//
// A running job given up (its handler ran past its timeout) is abandoned (abandon()): its thread
// stays with it, and the pool starts a replacement thread, so that `threads` can still run jobs;
// at most `cap` threads are abandoned at once (a job abandoned beyond the cap gets no
// replacement). When an abandoned job returns (returned()), the pool is one thread above its
// target, and one thread exits instead of taking more work (the one that returned, as a rule).
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

  // `threads` (at least 1) kept able to run jobs; at most `cap` abandoned threads at once (< 0:
  // `threads`).
  explicit HandlerPool(int threads, int cap = -1);
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
  // Jobs running now (abandoned ones included).
  int running() const;
  // A running job was given up and keeps its thread: true when `threads` can still run jobs (a
  // replacement thread was started, or none was needed); false (none started) beyond the cap,
  // when closed, or when no thread could be started.
  bool abandon();
  // An abandoned job returned: one thread above the target exits (at once if idle, else after its
  // job).
  void returned();
  // Threads alive; abandoned ones (their jobs given up and still running); threads able to run
  // jobs (alive - abandoned: the target, but at the cap or when a thread could not be started).
  int threads() const;
  int abandoned() const;
  int healthy() const;
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
    int target = 1;     // threads kept able to run jobs
    int cap = 1;        // most abandoned threads at once
    int alive = 0;      // threads started and not ended
    int abandoned = 0;  // abandon() - returned()
    int running = 0;
    int exited = 0;
    std::vector<std::thread::id> ended;  // threads that exited above the target, to join
    bool closed = false;
    bool expired = false;  // a close_and_wait() deadline passed
  };
  static void thread_main(const std::shared_ptr<Shared>& shared);
  static void run_job(Job& job) noexcept;
  // Starts a thread (counted alive by the caller); false when none could be started.
  bool start_thread();
  // Joins the threads that exited above the target.
  void reap();

  std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  std::mutex threads_mu_;  // threads_; taken before shared_->mu, never while holding it
  std::vector<std::thread> threads_;
};

}  // namespace flowreg::detail
