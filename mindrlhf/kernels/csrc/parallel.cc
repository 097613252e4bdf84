// A persistent pool of worker threads for parallel_blocks: workers sleep on a condition variable between
// calls. The rows are cut into a fixed number of blocks that the caller and the workers claim one at a time,
// so a thread the OS does not schedule (a busy machine) delays nothing: the others take its blocks. One call
// at a time uses the pool; a concurrent caller (MindSpore may launch two kernels at once) runs its blocks
// alone. After a fork the child starts its own pool (the parent's threads are not copied).
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

struct Job {
  const std::function<void(int64_t)> *run_block;
  int64_t blocks;
  std::atomic<int64_t> next{0};
  // Claims and runs blocks until none is left.
  void drain() {
    for (int64_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) (*run_block)(b);
  }
};

class Pool {
 public:
  explicit Pool(int workers) : pid_(getpid()), workers_(workers) {
    for (int i = 0; i < workers; i++) std::thread([this] { work(); }).detach();  // lives as long as the process
  }
  pid_t pid() const { return pid_; }
  int workers() const { return workers_; }
  std::mutex busy;

  void run(Job *job, int helpers) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
      wanted_ = helpers;
      generation_++;
    }
    wake_.notify_all();
    job->drain();
    // every block is claimed; wait for the workers still inside this job, then close it
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [this] { return active_ == 0; });
    job_ = nullptr;
  }

 private:
  void work() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (job_ == nullptr || wanted_ <= 0) continue;
      wanted_--;
      active_++;
      Job *job = job_;
      lock.unlock();
      job->drain();
      lock.lock();
      if (--active_ == 0) idle_.notify_all();
    }
  }

  pid_t pid_;
  int workers_;
  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  Job *job_ = nullptr;
  int wanted_ = 0, active_ = 0;
  uint64_t generation_ = 0;
};

Pool *g_pool = nullptr;
std::mutex g_pool_mutex;

Pool *pool(int workers) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool == nullptr || g_pool->pid() != getpid() || g_pool->workers() < workers) {
    g_pool = new Pool(workers);  // an old pool (smaller, or the parent's after fork) is left idle
  }
  return g_pool;
}

}  // namespace

namespace mrl {

int num_threads() {
  int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

int64_t block_count(int64_t rows, int64_t cost) {
  const int64_t grain = 16384, most = 64;
  return std::max<int64_t>(1, std::min({rows, most, rows * std::max<int64_t>(cost, 1) / grain}));
}

void parallel_blocks(int64_t rows, int64_t cost, const std::function<void(int64_t, int64_t, int64_t)> &fn) {
  const int64_t blocks = block_count(rows, cost);
  const std::function<void(int64_t)> run_block = [&](int64_t b) {
    const int64_t begin = rows * b / blocks, end = rows * (b + 1) / blocks;
    if (begin < end) fn(b, begin, end);
  };
  Job job;
  job.run_block = &run_block;
  job.blocks = blocks;
  const int helpers = static_cast<int>(std::min<int64_t>(num_threads(), blocks)) - 1;
  if (helpers <= 0) {
    job.drain();
    return;
  }
  Pool *p = pool(helpers);
  std::unique_lock<std::mutex> lock(p->busy, std::try_to_lock);
  if (!lock.owns_lock()) {
    job.drain();
    return;
  }
  p->run(&job, helpers);
}

}  // namespace mrl

// The thread count kernels use from now on; n <= 0 restores the default (the CPUs this process may run on).
extern "C" void mindrlhf_set_threads(int n) { g_threads.store(n); }
extern "C" int mindrlhf_threads() { return mrl::num_threads(); }
