// Caching allocators, one for the host and one per CUDA device. A freed block goes back to a cache
// and the next request of a similar size takes it, so a training loop with static shapes stops
// reaching malloc / cudaMalloc after its first step.
//
// The CUDA cache is not stream-aware: a block freed on the host may be handed out again while a
// kernel queued earlier still reads it. That is safe because the engine's device work runs on one
// compute stream in order, and work on any other stream (collectives, input uploads) is joined back
// to it by events before a block it touches can be freed (engine/stream.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace deit {

// Thrown by CachingAllocator::allocate when the system refuses a block even after the cache was
// given back: the command line answers it with what needs less memory (apps/main.cpp).
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct AllocatorStats {
  size_t bytes_in_use = 0;     // handed out and not yet freed
  size_t bytes_cached = 0;     // freed, kept for reuse
  size_t peak_bytes_in_use = 0;
  uint64_t system_allocations = 0;  // calls that reached malloc / cudaMalloc
  uint64_t cache_hits = 0;          // requests served from the cache
};

class CachingAllocator {
 public:
  explicit CachingAllocator(std::string name) : name_(std::move(name)) {}
  virtual ~CachingAllocator() = default;
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t bytes);
  void deallocate(void* ptr);
  // Returns every cached block to the system.
  void release_cached();
  AllocatorStats stats() const;
  // The most it will hold from the system, cached blocks included (beyond: OutOfMemory).
  size_t capacity() const { return system_capacity(); }

  // Private pools for CUDA graphs (engine/cuda_graph.h). A replay writes the addresses its capture
  // saw, so a block the captured work allocated must never serve anything else while the graph
  // can still be launched, even after the tensor that held it is gone. Between begin_pool() and
  // end_pool() every allocation comes from, and afterwards belongs to, a new pool, and so does
  // every block freed meanwhile (the captured work may have used it): freed, its blocks go back
  // to that pool, which serves only the pool's own later captures. release_pool()
  // (the graph is destroyed) hands the pool's blocks back to the shared cache; blocks still held
  // by live tensors follow when those are freed. One capture at a time per allocator.
  uint64_t begin_pool();
  void end_pool();
  void release_pool(uint64_t pool);

  // Requests are rounded up to this granularity so near-identical sizes share blocks.
  static size_t round_size(size_t bytes);

 protected:
  virtual void* system_allocate(size_t bytes) = 0;  // nullptr when out of memory
  virtual void system_free(void* ptr) = 0;
  // The most this allocator may hold from the system, cached blocks included.
  virtual size_t system_capacity() const { return SIZE_MAX; }

 private:
  void release_cached_locked();
  // A new block of `size` from the system, within system_capacity(); nullptr when refused.
  void* system_allocate_within_capacity(size_t size);

  // The smallest block of `cache` that fits `size`, unless it would waste more than half of
  // itself; removed from the cache. nullptr when none.
  void* take_cached(std::multimap<size_t, void*>& cache, size_t size, size_t& block);

  std::string name_;
  mutable std::mutex mutex_;
  std::multimap<size_t, void*> cached_;          // size -> block
  std::unordered_map<void*, size_t> in_use_;     // block -> size
  AllocatorStats stats_;
  uint64_t capturing_pool_ = 0;                  // the pool being filled; 0: none
  uint64_t last_pool_ = 0;
  std::unordered_map<void*, uint64_t> pool_of_;  // block -> its pool, for pool blocks only
  std::map<uint64_t, std::multimap<size_t, void*>> pool_cached_;  // live pools: size -> block
};

CachingAllocator& cpu_allocator();
// Throws in a CPU-only build or for a device index that does not exist.
CachingAllocator& cuda_allocator(int device);

}  // namespace deit
