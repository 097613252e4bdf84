// A persistent pool of worker threads for parallel_rows: workers sleep on a condition variable between
// calls. One call at a time uses the pool; a concurrent caller (MindSpore may launch two kernels at once)
// runs its rows alone. After a fork the child starts its own pool (the parent's threads are not copied).
#include <unistd.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"

namespace {

int default_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

std::atomic<int> g_threads{0};

class Pool {
 public:
  explicit Pool(int workers) : pid_(getpid()) {
    for (int i = 0; i < workers; i++) threads_.emplace_back([this, i] { work(i + 1); });
    for (auto &t : threads_) t.detach();  // the pool lives as long as the process
  }
  pid_t pid() const { return pid_; }
  int size() const { return static_cast<int>(threads_.size()) + 1; }
  std::mutex busy;

  // Runs job(part) for part in [0, parts), parts <= size(); the caller runs part 0.
  void run(int parts, const std::function<void(int)> &job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      parts_ = parts;
      pending_ = parts - 1;
      generation_++;
    }
    wake_.notify_all();
    job(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void work(int part) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (part >= parts_) continue;
      const std::function<void(int)> *job = job_;
      lock.unlock();
      (*job)(part);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  pid_t pid_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)> *job_ = nullptr;
  int parts_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
};

Pool *g_pool = nullptr;
std::mutex g_pool_mutex;

Pool *pool(int threads) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool == nullptr || g_pool->pid() != getpid() || g_pool->size() < threads) {
    g_pool = new Pool(threads - 1);  // an old pool (other size, or the parent's after fork) is left idle
  }
  return g_pool;
}

}  // namespace

namespace mrl {

int num_threads() {
  int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

int parallel_parts(int64_t rows, int64_t cost, const std::function<void(int, int64_t, int64_t)> &fn,
                   int max_parts) {
  const int64_t grain = 32768;
  int64_t parts = std::min<int64_t>(max_parts > 0 ? max_parts : num_threads(), std::max<int64_t>(1, rows * std::max<int64_t>(cost, 1) / grain));
  parts = std::min(parts, rows);
  if (parts <= 1) {
    if (rows > 0) fn(0, 0, rows);
    return 1;
  }
  Pool *p = pool(static_cast<int>(parts));
  std::unique_lock<std::mutex> lock(p->busy, std::try_to_lock);
  if (!lock.owns_lock()) {
    fn(0, 0, rows);
    return 1;
  }
  const std::function<void(int)> job = [&](int part) {
    int64_t begin = rows * part / parts, end = rows * (part + 1) / parts;
    if (begin < end) fn(part, begin, end);
  };
  p->run(static_cast<int>(parts), job);
  return static_cast<int>(parts);
}

}  // namespace mrl

// The thread count kernels use from now on; n <= 0 restores the default (the CPUs this process may run on).
extern "C" void mindrlhf_set_threads(int n) { g_threads.store(n); }
extern "C" int mindrlhf_threads() { return mrl::num_threads(); }
