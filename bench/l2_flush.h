// The one piece of device code the benchmarks need: a pass that reads a buffer and writes nothing,
// to fill the L2 cache with clean lines (bench/cuda_timing.h's L2Flusher).
#pragma once

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstddef>

namespace deit::bench {

// Reads every 16-byte vector of `buffer` (16-byte aligned, `bytes` a multiple of 16, all zeros);
// `sink` (one unsigned in device memory) is never written while the buffer holds zeros.
void read_through_l2(const void* buffer, size_t bytes, unsigned* sink, cudaStream_t stream);

}  // namespace deit::bench
#endif
