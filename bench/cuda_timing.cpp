#include "bench/cuda_timing.h"

#if DEIT_HAVE_CUDA
#include <algorithm>
#include <vector>

#include "bench/l2_flush.h"
#include "engine/rng.h"
#include "kernels/bf16.h"
#include "kernels/check.h"

namespace deit::bench {

L2Flusher::L2Flusher(int device, cudaStream_t stream) {
  int l2_bytes = 0;
  DEIT_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  // Four times the cache: with its replacement policy, one pass of the cache's size may leave
  // lines of the previous run behind.
  bytes_ = std::max<size_t>(size_t{4} * static_cast<size_t>(l2_bytes), size_t{64} << 20) &
           ~size_t{15};  // whole 16-byte vectors (read_through_l2)
  DEIT_CUDA_CHECK(cudaMalloc(&buffer_, bytes_));
  DEIT_CUDA_CHECK(cudaMalloc(&sink_, sizeof(unsigned)));
  // On the benchmark's stream, not cudaMemset's legacy one: the benchmarks' streams are
  // non-blocking and would not wait for it, and a flush that read non-zero bytes would write its
  // sink (read_through_l2) and leave a dirty line for the timed work.
  DEIT_CUDA_CHECK(cudaMemsetAsync(buffer_, 0, bytes_, stream));
}

L2Flusher::~L2Flusher() {
  cudaFree(buffer_);
  cudaFree(sink_);
}

void L2Flusher::flush(cudaStream_t stream) const {
  read_through_l2(buffer_, bytes_, sink_, stream);
}

Timing time_on_stream(cudaStream_t stream, const TimingOptions& options, const L2Flusher& flusher,
                      const std::function<void()>& work) {
  for (int i = 0; i < options.warmup; ++i) work();
  const int n = std::max(1, options.repeats);
  std::vector<cudaEvent_t> start(n), stop(n);
  for (int i = 0; i < n; ++i) {
    DEIT_CUDA_CHECK(cudaEventCreate(&start[i]));
    DEIT_CUDA_CHECK(cudaEventCreate(&stop[i]));
  }
  for (int i = 0; i < n; ++i) {
    flusher.flush(stream);
    DEIT_CUDA_CHECK(cudaEventRecord(start[i], stream));
    work();
    DEIT_CUDA_CHECK(cudaEventRecord(stop[i], stream));
  }
  DEIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> ms(n);
  for (int i = 0; i < n; ++i) {
    float elapsed = 0;
    DEIT_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start[i], stop[i]));
    ms[i] = elapsed;
    DEIT_CUDA_CHECK(cudaEventDestroy(start[i]));
    DEIT_CUDA_CHECK(cudaEventDestroy(stop[i]));
  }
  std::sort(ms.begin(), ms.end());
  Timing t;
  t.repeats = n;
  t.min_ms = ms.front();
  t.max_ms = ms.back();
  t.median_ms = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  return t;
}

DeviceMemory::DeviceMemory(size_t bytes) : bytes_(bytes) {
  DEIT_CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1)));
}

DeviceMemory::~DeviceMemory() { cudaFree(ptr_); }

RandomBf16Source::RandomBf16Source(size_t elements, uint64_t seed)
    : values_(elements * sizeof(kernels::bf16_bits)), elements_(elements) {
  Rng rng(seed);
  std::vector<kernels::bf16_bits> host(elements);
  for (auto& v : host) v = kernels::float_to_bf16(static_cast<float>(rng.uniform(-1.0, 1.0)));
  DEIT_CUDA_CHECK(cudaMemcpy(values_.as<void>(), host.data(), values_.bytes(),
                             cudaMemcpyHostToDevice));
  // From pageable memory the copy may return before its last DMA lands; fill() reads it from
  // other streams, which do not wait for the legacy stream.
  DEIT_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
}

void RandomBf16Source::fill(void* dst, size_t elements, cudaStream_t stream) const {
  auto* out = static_cast<kernels::bf16_bits*>(dst);
  for (size_t done = 0; done < elements;) {
    const size_t n = std::min(elements_, elements - done);
    DEIT_CUDA_CHECK(cudaMemcpyAsync(out + done, values_.as<kernels::bf16_bits>(),
                                    n * sizeof(kernels::bf16_bits), cudaMemcpyDeviceToDevice,
                                    stream));
    done += n;
  }
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  DEIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

}  // namespace deit::bench
#endif
