#include "engine/allocator.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
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

void* CachingAllocator::take_cached(std::multimap<size_t, void*>& cache, size_t size,
                                    size_t& block) {
  auto it = cache.lower_bound(size);
  if (it == cache.end() || it->first > 2 * size) return nullptr;
  void* ptr = it->second;
  block = it->first;
  cache.erase(it);
  stats_.bytes_cached -= block;
  ++stats_.cache_hits;
  return ptr;
}

void* CachingAllocator::allocate(size_t bytes) {
  // Near SIZE_MAX the rounding up would wrap to a small block that the caller's writes run past
  // (and 2 * size in take_cached would wrap too). No machine has half of 2^64 bytes to give.
  if (bytes > SIZE_MAX / 2)
    throw OutOfMemory(name_ + ": cannot allocate " + std::to_string(bytes) + " bytes");
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  size_t block = size;
  // While a graph is captured: its pool's own freed blocks first, then the shared cache (work
  // queued before the capture is ordered before every replay on the same stream).
  void* ptr = capturing_pool_ ? take_cached(pool_cached_[capturing_pool_], size, block) : nullptr;
  if (!ptr) ptr = take_cached(cached_, size, block);
  if (!ptr) {
    ptr = system_allocate_within_capacity(size);
    // Not while a graph is captured: giving the cache back frees memory, which capture refuses.
    if (!ptr && !capturing_pool_) {
      release_cached_locked();
      ptr = system_allocate_within_capacity(size);
    }
    if (!ptr)
      throw OutOfMemory(name_ + ": out of memory allocating " + std::to_string(size >> 20) +
                        " MiB (" + std::to_string(stats_.bytes_in_use >> 20) + " MiB in use" +
                        (system_capacity() == SIZE_MAX
                             ? ""
                             : ", " + std::to_string(system_capacity() >> 20) +
                                   " MiB at most: the machine's memory or its limit") +
                        ")");
    ++stats_.system_allocations;
  }
  in_use_[ptr] = block;
  if (capturing_pool_) pool_of_[ptr] = capturing_pool_;
  stats_.bytes_in_use += block;
  if (stats_.bytes_in_use > stats_.peak_bytes_in_use)
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  return ptr;
}

void* CachingAllocator::system_allocate_within_capacity(size_t size) {
  const size_t held = stats_.bytes_in_use + stats_.bytes_cached;
  if (size > system_capacity() || held > system_capacity() - size) return nullptr;
  return system_allocate(size);
}

void CachingAllocator::deallocate(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = in_use_.find(ptr);
  if (it == in_use_.end())
    throw std::logic_error(name_ + " allocator: freeing a pointer it did not hand out");
  stats_.bytes_in_use -= it->second;
  stats_.bytes_cached += it->second;
  auto pool = pool_of_.find(ptr);
  if (pool != pool_of_.end() && !pool_cached_.count(pool->second)) {
    pool_of_.erase(pool);  // its pool was released
    pool = pool_of_.end();
  }
  // Freed while a graph is captured, a block of no live pool may be one the captured work reads
  // or writes (a tensor made before the capture and dropped during it): the graph keeps it.
  if (pool == pool_of_.end() && capturing_pool_)
    pool = pool_of_.emplace(ptr, capturing_pool_).first;
  if (pool != pool_of_.end())
    pool_cached_[pool->second].emplace(it->second, ptr);
  else
    cached_.emplace(it->second, ptr);
  in_use_.erase(it);
}

uint64_t CachingAllocator::begin_pool() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (capturing_pool_) throw std::logic_error(name_ + " allocator: a pool is already being filled");
  capturing_pool_ = ++last_pool_;
  pool_cached_[capturing_pool_];
  return capturing_pool_;
}

void CachingAllocator::end_pool() {
  std::lock_guard<std::mutex> lock(mutex_);
  capturing_pool_ = 0;
}

void CachingAllocator::release_pool(uint64_t pool) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = pool_cached_.find(pool);
  if (it == pool_cached_.end()) return;
  for (const auto& [size, ptr] : it->second) {
    pool_of_.erase(ptr);
    cached_.emplace(size, ptr);
  }
  pool_cached_.erase(it);
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked();
}

void CachingAllocator::release_cached_locked() {
  // Pools keep theirs: a live graph still writes them.
  for (auto& [size, ptr] : cached_) {
    system_free(ptr);
    stats_.bytes_cached -= size;
  }
  cached_.clear();
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
  // The machine's memory, or the process's control group's limit (a container's, a Slurm job's)
  // or address-space limit (ulimit -v) where lower. Past it malloc may still succeed (Linux
  // overcommits), and the process is then killed without a word as it touches the pages: refused
  // here, it ends in OutOfMemory, which deit answers with what needs less.
  size_t system_capacity() const override {
    static const size_t capacity = [] {
      const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
      const size_t physical = pages > 0 && page > 0
                                  ? static_cast<size_t>(pages) * static_cast<size_t>(page)
                                  : SIZE_MAX;  // unknown: no bound of its own
      rlimit address_space{};
      const size_t address_space_limit =
          getrlimit(RLIMIT_AS, &address_space) == 0 && address_space.rlim_cur != RLIM_INFINITY
              ? static_cast<size_t>(address_space.rlim_cur)
              : SIZE_MAX;
      return std::min({physical, cgroup_memory_limit(), address_space_limit});
    }();
    return capacity;
  }

 private:
  // The memory limit of the process's control group (v2 memory.max, else v1
  // memory.limit_in_bytes, in the group /proc/self/cgroup names or at the root a container sees);
  // SIZE_MAX where there is none or it cannot be read.
  static size_t cgroup_memory_limit() {
    std::string v2_group, v1_group;
    std::ifstream groups("/proc/self/cgroup");
    for (std::string line; std::getline(groups, line);) {
      if (line.rfind("0::", 0) == 0) v2_group = line.substr(3);
      const size_t memory = line.find(":memory:");
      if (memory != std::string::npos) v1_group = line.substr(memory + 8);
    }
    const std::string candidates[] = {"/sys/fs/cgroup" + v2_group + "/memory.max",
                                      "/sys/fs/cgroup/memory" + v1_group + "/memory.limit_in_bytes",
                                      "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (const std::string& file : candidates) {
      std::ifstream limit(file);
      unsigned long long bytes = 0;
      if (limit >> bytes) return static_cast<size_t>(bytes);  // "max" reads as no number
    }
    return SIZE_MAX;
  }
};

#if DEIT_HAVE_CUDA
class DeviceAllocator final : public CachingAllocator {
 public:
  explicit DeviceAllocator(int device)
      : CachingAllocator("cuda:" + std::to_string(device)), device_(device) {}

 protected:
  void* system_allocate(size_t bytes) override {
    DEIT_CUDA_CHECK(cudaSetDevice(device_));
    // A capture in global mode (engine/cuda_graph.cpp) refuses cudaMalloc from any thread, but a
    // block the cache lacks may be asked for during one. The allocation is not part of the graph
    // and its block stays the graph's (begin_pool), so it is safe: this thread relaxes the mode
    // for the call, as PyTorch's caching allocator does.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    DEIT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    void* ptr = nullptr;
    const cudaError_t status = cudaMalloc(&ptr, bytes);
    DEIT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // answered by releasing the cache, then a runtime_error
      return nullptr;
    }
    DEIT_CUDA_CHECK(status);
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
  // Every tensor's allocation and release asks, the latter possibly while the process exits and
  // the CUDA runtime is gone: answer from the table without the driver once the allocator exists.
  if (device >= 0 && static_cast<size_t>(device) < allocators->size() && (*allocators)[device])
    return *(*allocators)[device];
  int count = 0;
  DEIT_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    throw std::invalid_argument("no CUDA device cuda:" + std::to_string(device) +
                                " (this machine has " + std::to_string(count) + ")");
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
