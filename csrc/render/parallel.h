// Parallel loop over the batch for the CPU renderer and the host side of the GPU path.
//
// Not at::parallel_for: in torch's OpenMP builds that is an inline `#pragma omp parallel`,
// serial in an extension compiled without -fopenmp, and GNU OpenMP's thread pool does not
// survive fork() (a forked DataLoader worker would hang). This pool is fork-safe: a child
// process drops the parent's pool (its threads do not exist there) and starts a new one.
// The number of threads follows torch.set_num_threads.
//
// Waking a sleeping thread (a futex wake and a reschedule) can take as long as laying out a
// whole batch: so after a job, helpers spin for kSpin before they sleep, and the caller spins
// for them to finish before it sleeps. Back-to-back jobs (an op's phases, a loop over
// batches) then pay no wake-up.
#pragma once

#include <ATen/Parallel.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

namespace clippo {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or `budget` has passed; returns done().
template <typename Done>
bool spin_until(const Done& done, std::chrono::microseconds budget) {
  const auto deadline = std::chrono::steady_clock::now() + budget;
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return done();
  }
}

// Helper threads that run one job at a time alongside the calling thread. Never destroyed
// (threads are detached), so interpreter shutdown cannot join a thread that is waiting.
class WorkerPool {
 public:
  static WorkerPool& instance() {
    static std::once_flag once;
    std::call_once(once, [] {
      pthread_atfork(nullptr, nullptr, [] {
        current() = nullptr;                   // the parent's threads are gone in the child
        new (&create_mutex()) std::mutex();    // and a lock held at fork would never open
      });
    });
    std::lock_guard<std::mutex> lock(create_mutex());
    if (current() == nullptr) current() = new WorkerPool();
    return *current();
  }

  // Runs job() on up to `helpers` pool threads and on the caller, and waits for all of them.
  // Returns false (running nothing) when another caller holds the pool: run job() alone.
  // job must not throw.
  bool run(int64_t helpers, const std::function<void()>& job) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    std::unique_lock<std::mutex> lock(mu_);
    while (static_cast<int64_t>(threads_) < helpers) {
      try {
        std::thread([this, i = threads_] { loop(i); }).detach();
        ++threads_;
      } catch (const std::system_error&) {
        break;  // no more threads to be had: fewer helpers
      }
    }
    want_ = std::min<int64_t>(helpers, static_cast<int64_t>(threads_));
    done_ = 0;
    job_ = &job;
    generation_.fetch_add(1, std::memory_order_release);
    lock.unlock();
    wake_.notify_all();
    job();
    spin_until([&] { return done_.load(std::memory_order_acquire) == want_; }, kSpin);
    lock.lock();
    finished_.wait(lock, [&] { return done_ == want_; });
    job_ = nullptr;
    return true;
  }

 private:
  static WorkerPool*& current() {
    static WorkerPool* pool = nullptr;
    return pool;
  }
  static std::mutex& create_mutex() {
    static std::mutex mu;
    return mu;
  }

  void loop(size_t index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      lock.unlock();
      spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; }, kSpin);
      lock.lock();
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (static_cast<int64_t>(index) >= want_) continue;  // not needed for this job
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      if (++done_ == want_) finished_.notify_one();
    }
  }

  static constexpr std::chrono::microseconds kSpin{200};

  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;      // guards everything below (the atomics are written under it too)
  std::condition_variable wake_, finished_;
  size_t threads_ = 0;
  int64_t want_ = 0;
  std::atomic<int64_t> done_{0};
  std::atomic<uint64_t> generation_{0};
  const std::function<void()>* job_ = nullptr;
};

// Calls fn(lo, hi) on chunks of at most `grain` items covering [begin, end), from up to
// at::get_num_threads() threads (the caller's included). Chunks are handed out on demand,
// so long and short strings balance. The first exception thrown by fn is rethrown.
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  if (end <= begin) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (end - begin + grain - 1) / grain;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), chunks);
  if (threads <= 1) {
    fn(begin, end);
    return;
  }
  std::atomic<int64_t> next{begin};
  std::exception_ptr error;
  std::mutex error_mu;
  const std::function<void()> work = [&] {
    try {
      for (int64_t lo; (lo = next.fetch_add(grain)) < end;) fn(lo, std::min(lo + grain, end));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next = end;  // stop handing out work
    }
  };
  if (!WorkerPool::instance().run(threads - 1, work)) work();
  if (error) std::rethrow_exception(error);
}

}  // namespace clippo
