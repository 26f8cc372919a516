// The device code of the residual update with LayerScale and drop-path, alone and fused with the
// LayerNorm after it (kernels/cuda/layerscale.cu says what each fuses, its launch shapes and its
// measured speed): the forward op of the elementwise launcher, the backward kernel with its
// per-chunk partial sums of dgamma, and the fused forward and backward kernels, whose LayerNorm
// arithmetic is kernels/cuda/layernorm_row.cuh. The residual stream (x, out) and its gradient
// (dout, dx) are fp32, the branch side (branch, y, dy, dbranch) bf16: kernels/layerscale.h says
// why.
//
// Included by layerscale.cu, and by the emulated test (tests/emulated/layernorm_emulated.cpp)
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

struct LayerscaleForwardOp {
  const float* x;
  const bf16* branch;
  const bf16* gamma;
  const float* keep_scale;
  float* out;
  int64_t Tn, C;
  // With N = kVec, C % kVec == 0, so the vector lies in one row.
  template <int N>
  __device__ void apply(int64_t i) const {
    const int64_t row = i / C;
    const int64_t c = i - row * C;
    const float keep = keep_scale[row / Tn];
    float v[N], br[N], g[N];
    gpu::load<N>(x + i, v);
    gpu::load<N>(branch + i, br);
    gpu::load<N>(gamma + c, g);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] += keep * g[j] * br[j];
    gpu::store<N>(out + i, v);
  }
};

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) of the (B*T, C) view; dbranch and
// partials may each be nullptr.
template <int V>
__global__ void __launch_bounds__(1024)
    layerscale_backward_kernel(const float* dout, const bf16* branch, const bf16* gamma,
                               const float* keep_scale, bf16* dbranch, float* partials,
                               int64_t rows, int64_t Tn, int64_t C, int64_t rows_per_chunk) {
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float g[kVec] = {}, acc[kVec] = {};
  if (dbranch) gpu::load_row<V>(gamma, C, g);  // gamma is only needed for dbranch
  for (int64_t r = r0; r < r1; ++r) {
    const float keep = keep_scale[r / Tn];
    float d[kVec];
    gpu::load_row<V>(dout + r * C, C, d);
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] *= keep;
    if (partials) {
      float br[kVec];
      gpu::load_row<V>(branch + r * C, C, br);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] += d[e] * br[e];
    }
    if (dbranch) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) d[e] *= g[e];
      gpu::store_row<V>(dbranch + r * C, C, d);
    }
  }
  if (partials) gpu::store_row<V>(partials + blockIdx.x * C, C, acc);
}

// One block per row r of the (B*T, C) view, grid-striding: out = x + keep * gamma * branch, then
// y = LayerNorm(out), as layernorm_forward_kernel computes it (one row a block, for the reason it
// gives). out is stored in fp32 as computed, so the LayerNorm here normalises exactly what
// backward reads.
template <int V>
__global__ void __launch_bounds__(1024)
    layerscale_layernorm_forward_kernel(const float* x, const bf16* branch, const bf16* gamma,
                                        const float* keep_scale, const bf16* ln_weight,
                                        const bf16* ln_bias, float* out, bf16* y, float* mean,
                                        float* rstd, int64_t rows, int64_t Tn, int64_t C,
                                        float eps) {
  __shared__ float scratch[32];
  float g[kVec], w[kVec], b[kVec];
  gpu::load_row<V>(gamma, C, g);
  gpu::load_row<V>(ln_weight, C, w);
  gpu::load_row<V>(ln_bias, C, b);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float keep = keep_scale[r / Tn];
    float v[kVec], br[kVec];
    gpu::load_row<V>(x + r * C, C, v);
    gpu::load_row<V>(branch + r * C, C, br);
    // Slots past C stay 0 (0 + keep * 0 * 0).
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] += keep * g[e] * br[e];
    gpu::store_row<V>(out + r * C, C, v);
    gpu::layernorm_row_forward<V>(v, w, b, C, eps, scratch, mean ? mean + r : nullptr,
                                  rstd ? rstd + r : nullptr);
    gpu::store_row<V>(y + r * C, C, v);
  }
}

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) of the (B*T, C) view. Per row:
// d = dout + LayerNorm backward(dy) in fp32, written to dx; then d * keep is LayerScale's input
// gradient: dbranch = d * keep * gamma, which (as stored, in bf16) adds to the dbias partials, the
// bias gradient of the linear layer that made branch, in the order and chunks that the linear
// layer's own pass over dbranch (column_partials_kernel) would sum it: the same bits; and
// d * keep * branch adds to the dgamma partials. Any of dout, dbranch and the partials may be
// nullptr (the dbias partials need dbranch). gamma and ln_weight are re-read per row (from L1)
// rather than held. Early (blocks of at most kEarlyLoadThreads, so 128 registers a thread): dout
// and branch are loaded with dy and out, before the LayerNorm's reductions, so that a row waits for
// memory once; otherwise (the 64 registers of a 1024-thread block) after them, and a row waits
// three times, each wait then a barrier's.
template <int V, bool Early>
__global__ void __launch_bounds__(Early ? gpu::kEarlyLoadThreads : 1024)
    layerscale_layernorm_backward_kernel(const float* dout, const bf16* dy, const float* out,
                                         const bf16* branch, const bf16* gamma,
                                         const float* keep_scale, const bf16* ln_weight,
                                         const float* mean, const float* rstd, float* dx,
                                         bf16* dbranch, float* dgamma_partials, float* dw_partials,
                                         float* db_partials, float* dbias_partials, int64_t rows,
                                         int64_t Tn, int64_t C, int64_t rows_per_chunk) {
  __shared__ float scratch[64];
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float dgamma[kVec] = {}, dw[kVec] = {}, db[kVec] = {}, dbias[kVec] = {};
  for (int64_t r = r0; r < r1; ++r) {
    float g[kVec], xh[kVec], t[kVec], d[kVec];
    float br[kVec] = {};  // read only where loaded; set, as the host compiler cannot see that
    const auto load_dout = [&] {
      if (dout) {
        gpu::load_row<V>(dout + r * C, C, d);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) d[e] = 0.f;
      }
    };
    gpu::load_row<V>(dy + r * C, C, g);
    gpu::load_row<V>(out + r * C, C, xh);
    if constexpr (Early) {
      load_dout();
      if (dgamma_partials) gpu::load_row<V>(branch + r * C, C, br);
    }
    gpu::load_row<V>(ln_weight, C, t);
    gpu::layernorm_row_backward<V>(g, xh, t, mean[r], rstd[r], C, scratch, dw, db);
    if constexpr (!Early) load_dout();
      // dx = dout + what flows back through the LayerNorm
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] += g[e];
    gpu::store_row<V>(dx + r * C, C, d);
    const float keep = keep_scale[r / Tn];
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] *= keep;
    if (dgamma_partials) {
      if constexpr (!Early) gpu::load_row<V>(branch + r * C, C, br);
#pragma unroll
      for (int e = 0; e < kVec; ++e) dgamma[e] += d[e] * br[e];  // branch is 0 past C
    }
    if (dbranch) {
      gpu::load_row<V>(gamma, C, t);
#pragma unroll
      for (int e = 0; e < kVec; ++e) d[e] *= t[e];
      gpu::store_row<V>(dbranch + r * C, C, d);
      if (dbias_partials) {
#pragma unroll
        for (int e = 0; e < kVec; ++e)  // as stored, as column_partials_kernel would sum it
          dbias[e] += __bfloat162float(__float2bfloat16_rn(d[e]));
      }
    }
  }
  if (dgamma_partials) gpu::store_row<V>(dgamma_partials + blockIdx.x * C, C, dgamma);
  if (dw_partials) gpu::store_row<V>(dw_partials + blockIdx.x * C, C, dw);
  if (db_partials) gpu::store_row<V>(db_partials + blockIdx.x * C, C, db);
  if (dbias_partials) gpu::store_row<V>(dbias_partials + blockIdx.x * C, C, dbias);
}

}  // namespace

}  // namespace deit::kernels
