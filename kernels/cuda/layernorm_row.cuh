// Private to kernels/cuda/: the LayerNorm arithmetic of one row, written once for both layouts of
// a row over threads (common_device.cuh's BlockRow and WarpRow: each thread holds Row::kSlots
// register slots of the row; slots past C hold 0). The LayerNorm kernels (layernorm_kernels.cuh)
// normalise rows with it, and the residual update fused with the LayerNorm after it
// (layerscale_kernels.cuh) does the same. Device code a host compiler can read: the emulated test
// (tests/emulated/layernorm_emulated.cpp) runs it too.
#pragma once
#include "kernels/cuda/common_device.cuh"

namespace deit::kernels::gpu {

// v: the row x -> xhat = (x - mean) * rstd, with the mean, then the variance from the centred
// values (two passes over registers, not E[x^2] - E[x]^2); slots past C end as 0. Every thread of
// the row calls it. The row's first thread stores its mean and rstd where given (each pointer may
// be nullptr).
template <typename Row>
__device__ __forceinline__ void layernorm_row_normalize(float (&v)[Row::kSlots], const Row& row,
                                                        float eps, float* mean_out,
                                                        float* rstd_out) {
  const float inv_C = 1.f / static_cast<float>(row.C);
  float s[1] = {0.f};
#pragma unroll
  for (int e = 0; e < Row::kSlots; ++e) s[0] += v[e];
  row.sum(s);
  const float mean = s[0] * inv_C;
  float q[1] = {0.f};
#pragma unroll
  for (int e = 0; e < Row::kSlots; ++e) {
    v[e] = row.owns(e) ? v[e] - mean : 0.f;
    q[0] += v[e] * v[e];
  }
  row.sum(q);
  // rsqrtf (2 ulp): one MUFU.RSQ and its guard, where 1.f / sqrtf rounds twice through a square
  // root and an IEEE division, with slow-path calls: about 20 instructions a thread a row.
  const float rstd = rsqrtf(q[0] * inv_C + eps);
#pragma unroll
  for (int e = 0; e < Row::kSlots; ++e) v[e] *= rstd;
  if (row.first()) {
    if (mean_out) *mean_out = mean;
    if (rstd_out) *rstd_out = rstd;
  }
}

// A block per row: v: the row x -> y = xhat * w + b (layernorm_row_normalize); scratch: 32
// floats of shared memory.
template <int V>
__device__ __forceinline__ void layernorm_row_forward(float (&v)[kVec], const float (&w)[kVec],
                                                      const float (&b)[kVec], int64_t C, float eps,
                                                      float* scratch, float* mean_out,
                                                      float* rstd_out) {
  layernorm_row_normalize(v, BlockRow<V>{C, scratch}, eps, mean_out, rstd_out);
#pragma unroll
  for (int e = 0; e < kVec; ++e) v[e] = v[e] * w[e] + b[e];
}

// The blocks an SM that the forward kernels in the warp row layout (the LayerNorm alone and fused
// with the residual update) are held to: 10 (48 registers) up to G = 2 slot groups, 9 (56) at
// G = 3 and 8 (64) at G = 4. Left alone, ptxas hoists the weight and bias loads and takes up to 56
// registers at G = 3 (the LayerNorm, sm_90) and 71 at G = 4 (fused); held to these neither spills
// (held to 48 at G = 4, the LayerNorm spills 88 bytes). G = 3 had 10 blocks until the fused
// kernel's slot maps (60 bytes spilled there, sm_90) and the 16-byte bf16 loads (8 bytes in the
// LayerNorm alone) needed more than 48 registers.
constexpr int forward_warp_row_min_blocks(int G) { return G <= 2 ? 10 : (G == 3 ? 9 : 8); }

// A warp per row: v: the row x -> y = xhat * w + b (layernorm_row_normalize), the weight and bias
// read a slot group at a time (from L1: every warp of an SM reads the same) rather than held in
// registers.
template <int G>
__device__ __forceinline__ void layernorm_warp_row_forward(float (&v)[WarpRow<G>::kSlots],
                                                           const WarpRow<G>& row,
                                                           const bf16* weight, const bf16* bias,
                                                           float eps, float* mean_out,
                                                           float* rstd_out) {
  layernorm_row_normalize(v, row, eps, mean_out, rstd_out);
#pragma unroll
  for (int k = 0; k < G; ++k) {
    float w[kVec], b[kVec];
    row.load_group(weight, k, w);
    row.load_group(bias, k, b);
    float* vk = v + k * kVec;
#pragma unroll
    for (int j = 0; j < kVec; ++j) vk[j] = vk[j] * w[j] + b[j];
  }
}

// g: the row's dy, x: the row's x (mean and rstd as forward saved them) -> g: dx =
// rstd * (dy w - mean_c(dy w) - xhat * mean_c(dy w xhat)); x is overwritten with xhat. Every
// thread of the row calls it, a group of kVec slots at a time: weight(k, w) sets w to the
// LayerNorm weight of slot group k (0 past C), and accumulate(k, dy, xhat) is given the group's
// dy and xhat (kVec each; dy is 0 past C), whose products and dy are the group's terms of the
// weight and bias gradients.
template <typename Row, typename Weight, typename Accumulate>
__device__ __forceinline__ void layernorm_row_backward(float (&g)[Row::kSlots],
                                                       float (&x)[Row::kSlots], float mean,
                                                       float rstd, const Row& row, Weight&& weight,
                                                       Accumulate&& accumulate) {
  const float inv_C = 1.f / static_cast<float>(row.C);
  float sums[2] = {0.f, 0.f};  // sum_c g, sum_c g * xhat with g = dy * w
#pragma unroll
  for (int k = 0; k < Row::kSlots / kVec; ++k) {
    float* gk = g + k * kVec;
    float* xk = x + k * kVec;
    float w[kVec];
    weight(k, w);
#pragma unroll
    for (int j = 0; j < kVec; ++j) xk[j] = (xk[j] - mean) * rstd;
    accumulate(k, gk, xk);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      gk[j] *= w[j];
      sums[0] += gk[j];
      sums[1] += gk[j] * xk[j];
    }
  }
  row.sum(sums);
#pragma unroll
  for (int e = 0; e < Row::kSlots; ++e) g[e] = rstd * (g[e] - (sums[0] + x[e] * sums[1]) * inv_C);
}

// A block per row, w the LayerNorm weight in registers: layernorm_row_backward, adding dy * xhat
// to dw and dy to db (the per-column sums of the weight and bias gradients); scratch: 64 floats
// of shared memory.
template <int V>
__device__ __forceinline__ void layernorm_row_backward(float (&g)[kVec], float (&x)[kVec],
                                                       const float (&w)[kVec], float mean,
                                                       float rstd, int64_t C, float* scratch,
                                                       float (&dw)[kVec], float (&db)[kVec]) {
  layernorm_row_backward(
      g, x, mean, rstd, BlockRow<V>{C, scratch},
      [&](int, float(&wk)[kVec]) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) wk[j] = w[j];
      },
      [&](int, const float* dy, const float* xhat) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          dw[j] += dy[j] * xhat[j];
          db[j] += dy[j];
        }
      });
}

// A warp per row: layernorm_row_backward with the weight read a slot group at a time (from L1),
// adding dy * xhat to set `dw_set` of `sums` and dy to set `dw_set + 1`.
template <int G, typename Sums>
__device__ __forceinline__ void layernorm_warp_row_backward(
    float (&g)[WarpRow<G>::kSlots], float (&x)[WarpRow<G>::kSlots], float mean, float rstd,
    const WarpRow<G>& row, const bf16* weight, const Sums& sums, int dw_set) {
  layernorm_row_backward(
      g, x, mean, rstd, row, [&](int k, float(&w)[kVec]) { row.load_group(weight, k, w); },
      [&](int k, const float* dy, const float* xhat) {
        float t[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) t[j] = dy[j] * xhat[j];
        sums.add(dw_set, row, k, t);
        sums.add(dw_set + 1, row, k, dy);
      });
}

}  // namespace deit::kernels::gpu
