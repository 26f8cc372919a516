// The device code of the reductions the kernel families share (kernels/cuda/common.cu says what
// each adds and its launch shape): column_partials_kernel, the per-chunk column sums of a bf16
// matrix (the linear layer's bias gradient, and the fused residual + LayerNorm backward's where
// its rows take a warp each), sum_partials_kernel, the second stage of every deterministic column
// sum, and sum_to_scalar_kernel, the mean of the losses.
//
// Included by common.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh and the built-ins the emulator provides; anything
// more needs a stand-in there. Each includer is the only translation unit of its program with
// these kernels, hence the unnamed namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels::gpu {
namespace {

constexpr int kPartialCols = 8;
constexpr int kPartialLanes = 128;
constexpr int kPartialThreads = kPartialCols * kPartialLanes;

// The chunk lanes sum_partials_kernel runs for `chunks` partials: the smallest power of 2 that
// holds them two to a lane, at most kPartialLanes. A lane that adds its second chunk to its first
// does what the tree's first step does with twice the lanes, and lanes past the last chunk only add
// +0 (a lane's sum starts at +0, so it is never -0), so the sums are those of 128 lanes, bit for
// bit. A ViT batch's hundreds of chunks take all 128; a small batch's few dozen take a few times
// fewer threads and barriers, which the emulated device, running each thread in turn, pays for
// most.
constexpr int partial_lanes(int64_t chunks) {
  int lanes = 1;
  while (lanes < kPartialLanes && 2 * lanes < chunks) lanes *= 2;
  return lanes;
}
constexpr int kScalarThreads = 1024;

// Block `chunk` writes the sums over rows [chunk * rows_per_chunk, ...) of m (rows, C), in row
// order, whose rows lie ld elements apart (a tile of C columns of a wider matrix), to
// partials[chunk * C + c]; row_threads(C) threads, each summing 8 columns (the row layout of
// common_device.cuh). On the vector path a thread loads 4 rows before adding them, in order: the
// same bits as a row at a time, with four times the bytes in flight (a block of deit3_small's 384
// columns has 48 working threads, each otherwise waiting on 16 bytes at a time). sm_90 SASS issues
// the 4 loads back to back with the column test out of the row loop and the chunk's last rows in
// a loop of their own (2026-12-05; before, each load waited for the previous row's use, and so
// it did with the test moved out but the last group's rows clamped, as in the GELU kernel, whose
// two rows ahead that form does keep together). The scalar path (odd widths) takes one row at a
// time.
template <int V>
constexpr int kColumnPartialsRowsAhead = V == kVec ? 4 : 1;

template <int V>
__global__ void __launch_bounds__(1024)
    column_partials_kernel(const bf16* m, float* partials, int64_t rows, int64_t C, int64_t ld,
                           int64_t rows_per_chunk) {
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float acc[kVec] = {};
  if (slot_column<V>(0) < C) {  // a thread past the row's columns sums nothing
    constexpr int kAhead = kColumnPartialsRowsAhead<V>;
    int64_t r = r0;
    for (; r + kAhead <= r1; r += kAhead) {  // whole groups of rows, then the rest one at a time
      float d[kAhead][kVec];
#pragma unroll
      for (int i = 0; i < kAhead; ++i) load_owned_row<V>(m + (r + i) * ld, C, d[i]);
#pragma unroll
      for (int i = 0; i < kAhead; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] += d[i][e];
    }
    for (; r < r1; ++r) {
      float d[kVec];
      load_owned_row<V>(m + r * ld, C, d);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] += d[e];
    }
  }
  store_row<V>(partials + blockIdx.x * C, C, acc);
}

// Block (x, s): columns [8x, 8x + 8) of set s of `sets`, blockDim.y = partial_lanes(chunks) lanes.
// __grid_constant__: indexed by blockIdx, `sets` is read where the launch put it; a plain by-value
// parameter was copied to a 72-byte stack frame first.
__global__ void __launch_bounds__(kPartialThreads)
    sum_partials_kernel(const __grid_constant__ PartialSets sets, int64_t chunks, int64_t C) {
  const float* partials = sets.partials[blockIdx.y];
  float* out = sets.out[blockIdx.y];
  __shared__ float acc[kPartialLanes][kPartialCols];
  const int x = threadIdx.x, y = threadIdx.y;
  const int lanes = static_cast<int>(blockDim.y);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kPartialCols + x;
  float s = 0.f;
  if (c < C)
    for (int64_t k = y; k < chunks; k += lanes) s += partials[k * C + c];
  acc[y][x] = s;
  __syncthreads();
  for (int half = lanes / 2; half > 0; half /= 2) {
    if (y < half) acc[y][x] += acc[y + half][x];
    __syncthreads();
  }
  if (y == 0 && c < C) out[c] = acc[0][x];
}

__global__ void __launch_bounds__(kScalarThreads)
    sum_to_scalar_kernel(const float* v, int64_t n, float scale, float* out) {
  __shared__ float scratch[32];
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = s * scale;
}

}  // namespace
}  // namespace deit::kernels::gpu
