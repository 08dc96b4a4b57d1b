// Output buffers for CPU rendering. A batch of 224x224 images is ~50 MB, and fresh memory
// costs a page fault per 4 KiB on first touch: more than drawing the text. So outputs are
// backed by transparent huge pages (512x fewer faults), and the blocks of freed outputs are
// kept in a small cache (the most recently freed, at most kMaxBlocks and kMaxBytes) for the
// next batch of the same size, as PyTorch's CUDA caching allocator does.
// clippo::empty_image_cache() releases them.
#include <pthread.h>
#include <sys/mman.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "render/render.h"

namespace clippo {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMaxBlocks = 4;
constexpr size_t kMaxBytes = size_t{512} << 20;

struct Pool {
  std::mutex mu;
  std::vector<std::pair<size_t, void*>> blocks;  // (size, pointer), most recent last
  size_t bytes = 0;
};

// Never destroyed: tensors freed during interpreter shutdown still return their blocks here.
Pool& pool() {
  static Pool* p = [] {
    // A fork while another thread holds the lock would leave the child's copy locked
    // forever; give the child a fresh mutex (its copies of the blocks stay valid).
    pthread_atfork(nullptr, nullptr, [] { new (&pool().mu) std::mutex(); });
    return new Pool();
  }();
  return *p;
}

// The freed block is kept (it is the likeliest size of the next batch); the oldest blocks make
// room for it. Frees happen outside the lock.
void give_back(void* ptr, size_t size) {
  if (size > kMaxBytes) {
    std::free(ptr);
    return;
  }
  std::vector<void*> evicted;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    size_t drop = 0;
    while (p.blocks.size() - drop >= kMaxBlocks || p.bytes + size > kMaxBytes) {
      p.bytes -= p.blocks[drop].first;
      evicted.push_back(p.blocks[drop].second);
      ++drop;
    }
    p.blocks.erase(p.blocks.begin(), p.blocks.begin() + static_cast<std::ptrdiff_t>(drop));
    p.blocks.emplace_back(size, ptr);
    p.bytes += size;
  }
  for (void* old : evicted) std::free(old);
}

void* take(size_t size) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    for (size_t i = p.blocks.size(); i-- > 0;) {
      if (p.blocks[i].first == size) {
        void* ptr = p.blocks[i].second;
        p.blocks.erase(p.blocks.begin() + static_cast<std::ptrdiff_t>(i));
        p.bytes -= size;
        return ptr;
      }
    }
  }
  void* ptr = nullptr;
  if (posix_memalign(&ptr, kHugePage, size) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
  madvise(ptr, size, MADV_HUGEPAGE);  // a hint: harmless where THP is off
#endif
  return ptr;
}

void empty_image_cache() {
  Pool& p = pool();
  std::vector<std::pair<size_t, void*>> blocks;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    blocks.swap(p.blocks);
    p.bytes = 0;
  }
  for (auto& b : blocks) std::free(b.second);
}

}  // namespace

at::Tensor empty_images(int64_t batch, int64_t image_size) {
  const size_t bytes = static_cast<size_t>(batch) * image_size * image_size;
  if (bytes < 2 * kHugePage) return at::empty({batch, image_size, image_size}, at::kByte);
  const size_t size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* ptr = take(size);
  if (ptr == nullptr) return at::empty({batch, image_size, image_size}, at::kByte);
  return at::from_blob(ptr, {batch, image_size, image_size},
                       [size](void* p) { give_back(p, size); },
                       at::TensorOptions().dtype(at::kByte));
}

TORCH_LIBRARY_FRAGMENT(clippo, m) {
  m.def("empty_image_cache() -> ()", &empty_image_cache);
}

}  // namespace clippo
