// Private to kernels/cuda/: the LayerNorm arithmetic of one row, in common_device.cuh's row
// layout (each thread holds kVec register slots of the row; slots past C hold 0). The LayerNorm
// kernels (layernorm_kernels.cuh) normalise rows with it, and the residual update fused with the
// LayerNorm after it (layerscale_kernels.cuh) does the same. Device code a host compiler can read:
// the emulated test (tests/emulated/layernorm_emulated.cpp) runs it too.
#pragma once
#include "kernels/cuda/common_device.cuh"

namespace deit::kernels::gpu {

// v: the row x -> y = (x - mean) * rstd * w + b, with the mean, then the variance from the
// centred values (two passes over registers, not E[x^2] - E[x]^2). Every thread of the block
// calls it; scratch: 32 floats of shared memory. The first thread stores the row's mean and
// rstd where given (each pointer may be nullptr).
template <int V>
__device__ __forceinline__ void layernorm_row_forward(float (&v)[kVec], const float (&w)[kVec],
                                                      const float (&b)[kVec], int64_t C,
                                                      float eps, float* scratch, float* mean_out,
                                                      float* rstd_out) {
  const float inv_C = 1.f / static_cast<float>(C);
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < kVec; ++e) s += v[e];
  const float mean = block_sum(s, scratch) * inv_C;
  float q = 0.f;
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    v[e] = owns_slot<V>(e, C) ? v[e] - mean : 0.f;
    q += v[e] * v[e];
  }
  // rsqrtf (2 ulp): one MUFU.RSQ and its guard, where 1.f / sqrtf rounds twice through a square
  // root and an IEEE division, with slow-path calls: about 20 instructions a thread a row.
  const float rstd = rsqrtf(block_sum(q, scratch) * inv_C + eps);
#pragma unroll
  for (int e = 0; e < kVec; ++e) v[e] = v[e] * rstd * w[e] + b[e];
  if (threadIdx.x == 0) {
    if (mean_out) *mean_out = mean;
    if (rstd_out) *rstd_out = rstd;
  }
}

// g: the row's dy, x: the row's x (mean and rstd as forward saved them) -> g: dx =
// rstd * (dy w - mean_c(dy w) - xhat * mean_c(dy w xhat)); x is overwritten with xhat. Adds
// dy * xhat to dw and dy to db (the per-column sums of the weight and bias gradients). Every
// thread of the block calls it; scratch: 64 floats of shared memory.
template <int V>
__device__ __forceinline__ void layernorm_row_backward(float (&g)[kVec], float (&x)[kVec],
                                                       const float (&w)[kVec], float mean,
                                                       float rstd, int64_t C, float* scratch,
                                                       float (&dw)[kVec], float (&db)[kVec]) {
  const float inv_C = 1.f / static_cast<float>(C);
  float sums[2] = {0.f, 0.f};  // sum_c g, sum_c g * xhat with g = dy * w
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    x[e] = (x[e] - mean) * rstd;
    dw[e] += g[e] * x[e];  // g still holds dy here; slots past C hold dy = 0
    db[e] += g[e];
    g[e] *= w[e];
    sums[0] += g[e];
    sums[1] += g[e] * x[e];
  }
  block_allreduce<SumOp, 2>(sums, scratch);
#pragma unroll
  for (int e = 0; e < kVec; ++e) g[e] = rstd * (g[e] - (sums[0] + x[e] * sums[1]) * inv_C);
}

}  // namespace deit::kernels::gpu
