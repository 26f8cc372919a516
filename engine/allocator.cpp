#include "engine/allocator.h"

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#if DEIT_HAVE_CUDA
#include "kernels/check.h"
#endif

namespace deit {

size_t CachingAllocator::round_size(size_t bytes) {
  constexpr size_t kSmall = 512;          // small tensors: 512-byte steps
  constexpr size_t kLarge = size_t{1} << 20;  // past 1 MiB: 1 MiB steps
  if (bytes == 0) bytes = 1;
  const size_t step = bytes < kLarge ? kSmall : kLarge;
  return (bytes + step - 1) / step * step;
}

void* CachingAllocator::allocate(size_t bytes) {
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  // Take the smallest cached block that fits, unless it would waste more than half of itself.
  auto it = cached_.lower_bound(size);
  void* ptr = nullptr;
  size_t block = size;
  if (it != cached_.end() && it->first <= 2 * size) {
    ptr = it->second;
    block = it->first;
    cached_.erase(it);
    stats_.bytes_cached -= block;
    ++stats_.cache_hits;
  } else {
    ptr = system_allocate(size);
    if (!ptr) {
      release_cached_locked();
      ptr = system_allocate(size);
    }
    if (!ptr)
      throw std::runtime_error(name_ + ": out of memory allocating " + std::to_string(size >> 20) +
                               " MiB (" + std::to_string(stats_.bytes_in_use >> 20) +
                               " MiB in use)");
    ++stats_.system_allocations;
  }
  in_use_[ptr] = block;
  stats_.bytes_in_use += block;
  if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
  return ptr;
}

void CachingAllocator::deallocate(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = in_use_.find(ptr);
  if (it == in_use_.end())
    throw std::logic_error(name_ + " allocator: freeing a pointer it did not hand out");
  stats_.bytes_in_use -= it->second;
  stats_.bytes_cached += it->second;
  cached_.emplace(it->second, ptr);
  in_use_.erase(it);
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked();
}

void CachingAllocator::release_cached_locked() {
  for (auto& [size, ptr] : cached_) system_free(ptr);
  cached_.clear();
  stats_.bytes_cached = 0;
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

namespace {

class HostAllocator final : public CachingAllocator {
 public:
  HostAllocator() : CachingAllocator("cpu") {}

 protected:
  // 64-byte alignment: whole cache lines, and aligned for any SIMD load.
  void* system_allocate(size_t bytes) override { return std::aligned_alloc(64, bytes); }
  void system_free(void* ptr) override { std::free(ptr); }
};

#if DEIT_HAVE_CUDA
class DeviceAllocator final : public CachingAllocator {
 public:
  explicit DeviceAllocator(int device)
      : CachingAllocator("cuda:" + std::to_string(device)), device_(device) {}

 protected:
  void* system_allocate(size_t bytes) override {
    DEIT_CUDA_CHECK(cudaSetDevice(device_));
    void* ptr = nullptr;
    if (cudaMalloc(&ptr, bytes) != cudaSuccess) {
      cudaGetLastError();  // out of memory is answered by releasing the cache, then bad_alloc
      return nullptr;
    }
    return ptr;
  }
  void system_free(void* ptr) override {
    DEIT_CUDA_CHECK(cudaSetDevice(device_));
    DEIT_CUDA_CHECK(cudaFree(ptr));
  }

 private:
  int device_;
};
#endif

}  // namespace

// The allocators live until the process ends (never destroyed), so tensors destroyed during static
// destruction can still give their memory back.
CachingAllocator& cpu_allocator() {
  static auto* allocator = new HostAllocator();
  return *allocator;
}

CachingAllocator& cuda_allocator(int device) {
#if DEIT_HAVE_CUDA
  static std::mutex mutex;
  static auto* allocators = new std::vector<std::unique_ptr<DeviceAllocator>>();
  std::lock_guard<std::mutex> lock(mutex);
  int count = 0;
  DEIT_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    throw std::invalid_argument("no CUDA device cuda:" + std::to_string(device) + " (this machine has " +
                                std::to_string(count) + ")");
  if (allocators->size() < static_cast<size_t>(count)) allocators->resize(count);
  auto& slot = (*allocators)[device];
  if (!slot) slot = std::make_unique<DeviceAllocator>(device);
  return *slot;
#else
  throw std::runtime_error("cuda:" + std::to_string(device) +
                           " requested, but this deit was built without CUDA");
#endif
}

}  // namespace deit
