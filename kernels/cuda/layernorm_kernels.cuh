// The device code of LayerNorm (kernels/cuda/layernorm.cu says what it fuses, its launch shapes
// and its measured speed): the forward kernel and the backward kernel with its per-chunk partial
// sums of dweight and dbias, each in two row layouts (a block per row, and a warp per row for
// rows up to 1024 wide on the vector path); the row arithmetic they all share with the fused
// residual + LayerNorm kernels is kernels/cuda/layernorm_row.cuh. x and dx are fp32: the LayerNorm
// alone reads the fp32 residual stream (block 0's norm1, the final norm) and its dx joins that
// stream's gradient.
//
// Included by layernorm.cu, and by the emulated test (tests/emulated/layernorm_emulated.cpp)
// after tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without
// a GPU. So the code here uses only common_device.cuh and layernorm_row.cuh, CUDA's bf16 types and
// conversions, and the built-ins the emulator provides; anything more needs a stand-in there.
// Each includer is the only translation unit of its program with these kernels, hence the unnamed
// namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"
#include "kernels/cuda/layernorm_row.cuh"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;

// One block per row r, grid-striding over the rows. A block walking several rows with the next
// row's loads issued early (session 17) gained nothing here on an H200 (0.083 ms at 50432 x 768,
// against 0.076 and 0.085 one row a block) and made the fused forward 0.158 ms against 0.128 and
// 0.130 (bench/results/2026-12-04-h200-gpu-check-3.md and -4.md).
template <int V>
__global__ void __launch_bounds__(1024)
    layernorm_forward_kernel(const float* x, const bf16* weight, const bf16* bias, bf16* y,
                             float* mean, float* rstd, int64_t rows, int64_t C, float eps) {
  __shared__ float scratch[32];
  float w[kVec], b[kVec];
  gpu::load_row<V>(weight, C, w);
  gpu::load_row<V>(bias, C, b);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float v[kVec];
    gpu::load_row<V>(x + r * C, C, v);
    gpu::layernorm_row_forward<V>(v, w, b, C, eps, scratch, mean ? mean + r : nullptr,
                                  rstd ? rstd + r : nullptr);
    gpu::store_row<V>(y + r * C, C, v);
  }
}

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) and writes its column sums of
// dy * xhat and dy to dw_partials / db_partials[chunk * C + c] (each may be nullptr). Early
// (blocks of at most kEarlyLoadThreads, so 128 registers a thread): the next row's dy and x load
// while this row's reductions wait at their barriers, instead of after its dx is stored.
template <int V, bool Early>
__global__ void __launch_bounds__(Early ? gpu::kEarlyLoadThreads : 1024)
    layernorm_backward_kernel(const bf16* dy, const float* x, const bf16* weight, const float* mean,
                              const float* rstd, float* dx, float* dw_partials, float* db_partials,
                              int64_t rows, int64_t C, int64_t rows_per_chunk) {
  __shared__ float scratch[64];
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float w[kVec], dw[kVec] = {}, db[kVec] = {};
  gpu::load_row<V>(weight, C, w);
  float g[kVec] = {}, xh[kVec] = {};  // row r's dy and x
  const auto load = [&](int64_t r, float(&dy_row)[kVec], float(&x_row)[kVec]) {
    gpu::load_row<V>(dy + r * C, C, dy_row);
    gpu::load_row<V>(x + r * C, C, x_row);
  };
  if (Early && r0 < r1) load(r0, g, xh);
  for (int64_t r = r0; r < r1; ++r) {
    float next_g[kVec] = {}, next_x[kVec] = {};
    if constexpr (Early) {
      if (r + 1 < r1) load(r + 1, next_g, next_x);
    } else {
      load(r, g, xh);
    }
    gpu::layernorm_row_backward<V>(g, xh, w, mean[r], rstd[r], C, scratch, dw, db);
    gpu::store_row<V>(dx + r * C, C, g);
    if constexpr (Early) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        g[e] = next_g[e];
        xh[e] = next_x[e];
      }
    }
  }
  if (dw_partials) gpu::store_row<V>(dw_partials + blockIdx.x * C, C, dw);
  if (db_partials) gpu::store_row<V>(db_partials + blockIdx.x * C, C, db);
}

// The warp row layout (launch_shape.h; vector path, C <= 1024): a warp per row, grid-striding
// over the rows, each lane holding G groups of 8 columns of x, with no barrier and no shared
// memory: the weight and bias are read per row (from L1) after the statistics rather than held,
// so that a thread's registers go to the row in flight.
template <int G>
__global__ void __launch_bounds__(gpu::kWarpRowThreads, gpu::forward_warp_row_min_blocks(G))
    layernorm_forward_warp_kernel(const float* x, const bf16* weight, const bf16* bias, bf16* y,
                                  float* mean, float* rstd, int64_t rows, int64_t C, float eps) {
  using Row = gpu::WarpRow<G>;
  const Row row{C};
  for (int64_t r = gpu::warp_row_first(); r < rows; r += gpu::warp_row_stride()) {
    float v[Row::kSlots];
    row.load(x + r * C, v);
    gpu::layernorm_warp_row_forward(v, row, weight, bias, eps, mean ? mean + r : nullptr,
                                    rstd ? rstd + r : nullptr);
    row.store(y + r * C, v);
  }
}

// The warp row layout's backward: block `chunk` handles rows [chunk * rows_per_chunk, ...) as
// layernorm_backward_kernel does, its warp w the rows w, w + 4, ... of them, summing the dweight
// and dbias terms in gpu::WarpColumnSums. Left alone, ptxas hoists the shared-memory loads of every
// slot group and takes 56, 80, 112 and 124 registers at G = 1 to 4 (sm_90): 4 blocks an SM at G =
// 3. Held to 8, 8, 6 and 5 blocks (64, 64, 80 and 96 registers) it spilled nothing until the
// 16-byte bf16 loads, which cost 4 bytes at G = 4 (sm_90; 8 at G = 2 on sm_80): a value that
// stays the same across rows, stored once and read back once a row (from L1). Fewer registers
// spill more at G >= 3. At G = 4 an A100 SM's 164 KB of shared memory holds only 4 blocks
// of the kernel's 32 KB (and 1 KB reserved each): held to 5 there it spilled 8 bytes for nothing,
// held to 4 (109 registers) it spills none.
constexpr int layernorm_backward_warp_min_blocks(int G) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if (G == 4) return 4;
#endif
  return G <= 2 ? 8 : (G == 3 ? 6 : 5);
}

template <int G>
__global__ void __launch_bounds__(gpu::kWarpRowThreads, layernorm_backward_warp_min_blocks(G))
    layernorm_backward_warp_kernel(const bf16* dy, const float* x, const bf16* weight,
                                   const float* mean, const float* rstd, float* dx,
                                   float* dw_partials, float* db_partials, int64_t rows, int64_t C,
                                   int64_t rows_per_chunk) {
  using Row = gpu::WarpRow<G>;
  using Sums = gpu::WarpColumnSums<G, 2>;  // dweight's, dbias's
  const Row row{C};
  const Sums sums(row);
  const gpu::WarpChunkRows chunk = gpu::warp_chunk_rows(rows, rows_per_chunk);
  for (int64_t r = chunk.first; r < chunk.end; r += chunk.kStep) {
    float g[Row::kSlots], xh[Row::kSlots];
    row.load(dy + r * C, g);
    row.load(x + r * C, xh);
    gpu::layernorm_warp_row_backward(g, xh, mean[r], rstd[r], row, weight, sums, 0);
    row.store(dx + r * C, g);
  }
  __syncthreads();
  if (dw_partials) sums.store_sums(0, C, dw_partials + blockIdx.x * C);
  if (db_partials) sums.store_sums(1, C, db_partials + blockIdx.x * C);
}

}  // namespace

}  // namespace deit::kernels
