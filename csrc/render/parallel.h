// Parallel loop over the batch for the CPU renderer.
//
// Not at::parallel_for: in torch's OpenMP builds that is an inline `#pragma omp parallel`,
// serial in an extension compiled without -fopenmp, and GNU OpenMP's thread pool does not
// survive fork() (a forked DataLoader worker would hang). Threads here live for one call,
// so nothing is left stale after a fork; their number follows torch.set_num_threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace clippo {

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
  auto work = [&] {
    try {
      for (int64_t lo; (lo = next.fetch_add(grain)) < end;) fn(lo, std::min(lo + grain, end));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next = end;  // stop handing out work
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (int64_t t = 1; t < threads; ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones we have finish the work
    }
  }
  work();
  for (auto& h : helpers) h.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace clippo
