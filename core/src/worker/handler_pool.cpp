#include "worker/handler_pool.hpp"

#include <algorithm>
#include <exception>
#include <system_error>
#include <utility>

namespace flowreg::detail {

HandlerPool::HandlerPool(int threads, int cap) {
  const int n = threads < 1 ? 1 : threads;
  shared_->target = n;
  shared_->cap = cap < 0 ? n : cap;
  shared_->alive = n;
  threads_.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) threads_.emplace_back([s = shared_] { thread_main(s); });
}

bool HandlerPool::start_thread() {
  std::lock_guard threads_lock(threads_mu_);
  try {
    threads_.emplace_back([s = shared_] { thread_main(s); });
    return true;
  } catch (const std::system_error&) {  // no thread to be had (a limit on threads or memory)
    return false;
  }
}

void HandlerPool::reap() {
  std::lock_guard threads_lock(threads_mu_);
  std::vector<std::thread::id> ended;
  {
    std::lock_guard lock(shared_->mu);
    ended.swap(shared_->ended);
  }
  for (const auto id : ended) {
    auto it = std::find_if(threads_.begin(), threads_.end(),
                           [&](const std::thread& t) { return t.get_id() == id; });
    if (it == threads_.end()) continue;
    it->join();  // it ended its loop: only its return is left
    threads_.erase(it);
  }
}

bool HandlerPool::abandon() {
  reap();
  {
    std::lock_guard lock(shared_->mu);
    ++shared_->abandoned;
    // A thread above the target covers it (the job returned before it was counted abandoned).
    if (shared_->alive - shared_->abandoned >= shared_->target) return true;
    if (shared_->closed || shared_->abandoned > shared_->cap) return false;
    ++shared_->alive;
  }
  if (start_thread()) return true;
  std::lock_guard lock(shared_->mu);
  --shared_->alive;
  return false;
}

void HandlerPool::returned() {
  {
    std::lock_guard lock(shared_->mu);
    --shared_->abandoned;
  }
  shared_->work_cv.notify_all();  // an idle thread above the target exits
}

int HandlerPool::threads() const {
  std::lock_guard lock(shared_->mu);
  return shared_->alive;
}

int HandlerPool::abandoned() const {
  std::lock_guard lock(shared_->mu);
  return shared_->abandoned;
}

int HandlerPool::healthy() const {
  std::lock_guard lock(shared_->mu);
  return shared_->alive - shared_->abandoned;
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
    std::lock_guard threads_lock(threads_mu_);
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
  if (jobs.size() >= static_cast<std::size_t>(shared_->target)) {
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
  std::lock_guard threads_lock(threads_mu_);
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
  // Above the target: an abandoned job returned (or its thread was replaced before it did).
  const auto surplus = [&] { return shared->alive - shared->abandoned > shared->target; };
  for (;;) {
    shared->work_cv.wait(lock,
                         [&] { return shared->closed || !shared->queue.empty() || surplus(); });
    if (surplus()) {
      --shared->alive;
      ++shared->exited;
      shared->ended.push_back(std::this_thread::get_id());
      shared->idle_cv.notify_all();
      return;
    }
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
  --shared->alive;
  ++shared->exited;
  shared->idle_cv.notify_all();
}

}  // namespace flowreg::detail
