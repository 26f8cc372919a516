// The device code of LayerNorm (kernels/cuda/layernorm.cu says what it fuses, its launch shapes
// and its measured speed): the forward kernel and the backward kernel with its per-chunk partial
// sums of dweight and dbias; the row arithmetic both share with the fused residual + LayerNorm
// kernels is kernels/cuda/layernorm_row.cuh. x and dx are fp32: the LayerNorm alone reads the
// fp32 residual stream (block 0's norm1, the final norm) and its dx joins that stream's gradient.
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

}  // namespace

}  // namespace deit::kernels
