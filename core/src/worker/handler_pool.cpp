#include "worker/handler_pool.hpp"

#include <exception>
#include <utility>

namespace flowreg::detail {

HandlerPool::HandlerPool(int threads) {
  const int n = threads < 1 ? 1 : threads;
  threads_.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) threads_.emplace_back([s = shared_] { thread_main(s); });
}

HandlerPool::~HandlerPool() {
  bool expired = false;
  {
    std::lock_guard lock(shared_->mu);
    expired = shared_->expired;
  }
  if (expired) {
    {
      std::lock_guard lock(shared_->mu);
      shared_->closed = true;
    }
    shared_->work_cv.notify_all();
    cancel_queued();
    for (auto& t : threads_) t.detach();
    return;
  }
  close_and_wait(std::chrono::steady_clock::time_point::max());
}

bool HandlerPool::submit(Job job) {
  {
    std::lock_guard lock(shared_->mu);
    if (shared_->closed) return false;
    shared_->queue.push_back(std::move(job));
  }
  shared_->work_cv.notify_one();
  return true;
}

bool HandlerPool::submit_all(std::vector<Job> jobs) {
  {
    std::lock_guard lock(shared_->mu);
    if (shared_->closed) return false;
    for (auto& job : jobs) shared_->queue.push_back(std::move(job));
  }
  if (jobs.size() >= threads_.size()) {
    shared_->work_cv.notify_all();
  } else {
    for (std::size_t i = 0; i < jobs.size(); ++i) shared_->work_cv.notify_one();
  }
  return true;
}

std::size_t HandlerPool::cancel_queued() {
  std::deque<Job> taken;
  {
    std::lock_guard lock(shared_->mu);
    taken.swap(shared_->queue);
  }
  for (auto& job : taken)
    if (job.cancel) job.cancel();
  return taken.size();
}

int HandlerPool::running() const {
  std::lock_guard lock(shared_->mu);
  return shared_->running;
}

std::size_t HandlerPool::queued() const {
  std::lock_guard lock(shared_->mu);
  return shared_->queue.size();
}

bool HandlerPool::close_and_wait(std::chrono::steady_clock::time_point deadline) {
  {
    std::lock_guard lock(shared_->mu);
    shared_->closed = true;
  }
  shared_->work_cv.notify_all();
  cancel_queued();
  {
    std::unique_lock lock(shared_->mu);
    // The deadline bounds the wait for running jobs only: idle threads exit at once once closed.
    const auto no_job = [&] { return shared_->running == 0 && shared_->queue.empty(); };
    if (deadline == std::chrono::steady_clock::time_point::max()) {
      shared_->idle_cv.wait(lock, no_job);
    } else if (!shared_->idle_cv.wait_until(lock, deadline, no_job)) {
      shared_->expired = true;
      return false;
    }
  }
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  return true;
}

namespace {

std::string exception_text() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}

}  // namespace

// An exception out of a job would end the thread, and so the process (std::terminate): it becomes
// the job's failure instead.
void HandlerPool::run_job(Job& job) noexcept {
  try {
    job.run();
    return;
  } catch (...) {
    if (!job.fail) return;
    try {
      job.fail(exception_text());
    } catch (...) {
    }
  }
}

void HandlerPool::thread_main(const std::shared_ptr<Shared>& shared) {
  std::unique_lock lock(shared->mu);
  for (;;) {
    shared->work_cv.wait(lock, [&] { return shared->closed || !shared->queue.empty(); });
    if (shared->queue.empty()) break;  // closed and nothing left
    Job job = std::move(shared->queue.front());
    shared->queue.pop_front();
    ++shared->running;
    lock.unlock();
    run_job(job);
    job = Job{};  // release what the job holds (a plugin's code) before counting it done
    lock.lock();
    --shared->running;
    shared->idle_cv.notify_all();
  }
  ++shared->exited;
  shared->idle_cv.notify_all();
}

}  // namespace flowreg::detail
