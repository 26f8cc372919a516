// How the kernel benchmarks time GPU work (METHOD: CUDA events around each run on the stream the
// work is issued on, after warm-up runs, with the L2 cache flushed before every run outside the
// timed region, the median over many runs), and the device buffers they time it on.
#pragma once

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace deit::bench {

struct TimingOptions {
  int warmup = 5;
  int repeats = 30;
};

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  double max_ms = 0;
  int repeats = 0;
};

// Evicts the L2 cache by reading a buffer of several times its size, so that every timed run reads
// its inputs from device memory, as a kernel inside a training step does (the ops between two uses
// of a tensor have long pushed it out of L2). Reading, not writing: a flush that writes leaves the
// L2 full of dirty lines, whose write-back the timed kernel would then pay for (up to an L2 of
// extra traffic: 50 MB on an H100 or H200, a fifth of the 233 MB a LayerNorm forward moves at
// ViT-B's shape in the kernel table).
class L2Flusher {
 public:
  // Zeroes its buffer on `stream`, the stream it will flush on: the flushes, and the timed work
  // after them, are ordered behind the zeroing without waiting on the host.
  L2Flusher(int device, cudaStream_t stream);
  ~L2Flusher();
  L2Flusher(const L2Flusher&) = delete;
  L2Flusher& operator=(const L2Flusher&) = delete;
  void flush(cudaStream_t stream) const;

 private:
  void* buffer_ = nullptr;
  size_t bytes_ = 0;
  unsigned* sink_ = nullptr;
};

// Runs `work` (which enqueues its kernels on `stream`) options.warmup times, then options.repeats
// times, each timed between two events on `stream` and preceded by flusher.flush(stream).
Timing time_on_stream(cudaStream_t stream, const TimingOptions& options, const L2Flusher& flusher,
                      const std::function<void()>& work);

// One device allocation, freed with the object.
class DeviceMemory {
 public:
  explicit DeviceMemory(size_t bytes);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Random bf16 values (uniform in [-1, 1)) made once on the host and kept on the device, copied into
// benchmark inputs: every input is random data (never zeros, which some units process faster),
// without generating gigabytes on the host.
class RandomBf16Source {
 public:
  RandomBf16Source(size_t elements, uint64_t seed);
  // Fills `elements` bf16 values at `dst` (repeating the source where it is shorter).
  void fill(void* dst, size_t elements, cudaStream_t stream) const;

 private:
  DeviceMemory values_;
  size_t elements_;
};

// The device's name as the driver reports it ("NVIDIA H200").
std::string device_name(int device);

}  // namespace deit::bench
#endif
