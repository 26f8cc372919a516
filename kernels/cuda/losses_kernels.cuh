// The device code of the classification losses (kernels/cuda/losses.cu says what they compute and
// their launch shapes): the per-row kernels of BCE with logits and of the soft-target softmax
// cross-entropy, each writing its row losses for sum_to_scalar to add.
//
// Included by losses.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh, CUDA's bf16 types and conversions, the math
// library, and the built-ins the emulator provides; anything more needs a stand-in there. Each
// includer is the only translation unit of its program with these kernels, hence the unnamed
// namespace.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels {
namespace {

using gpu::bf16;

// 1 / (1 + exp(-z)) through exp(-|z|), which never overflows.
__device__ __forceinline__ float sigmoid(float z) {
  const float e = expf(-fabsf(z));
  return z >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}

__global__ void __launch_bounds__(gpu::kThreads)
    bce_rows_kernel(const bf16* logits, const float* targets, bf16* dlogits, float* row_loss,
                    int64_t B, int64_t K, float inv_count) {
  __shared__ float scratch[32];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    float acc = 0.f;
    for (int64_t k = b * K + threadIdx.x; k < (b + 1) * K; k += blockDim.x) {
      const float z = __bfloat162float(logits[k]), t = targets[k];
      acc += fmaxf(z, 0.f) - z * t + log1pf(expf(-fabsf(z)));
      if (dlogits) dlogits[k] = __float2bfloat16_rn((sigmoid(z) - t) * inv_count);
    }
    acc = gpu::block_sum(acc, scratch);
    if (threadIdx.x == 0) row_loss[b] = acc;
  }
}

__global__ void __launch_bounds__(gpu::kThreads)
    softmax_cross_entropy_rows_kernel(const bf16* logits, const float* targets, bf16* dlogits,
                                      float* row_loss, int64_t B, int64_t K, float inv_B) {
  __shared__ float scratch[64];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const bf16* z = logits + b * K;
    const float* t = targets + b * K;
    float max = -INFINITY;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) max = fmaxf(max, __bfloat162float(z[k]));
    max = gpu::block_max(max, scratch);
    float sums[2] = {0.f, 0.f};  // sum_k exp(z_k - max), sum_k t_k
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
      sums[0] += expf(__bfloat162float(z[k]) - max);
      sums[1] += t[k];
    }
    gpu::block_allreduce<gpu::SumOp, 2>(sums, scratch);
    const float lse = max + logf(sums[0]);
    float acc = 0.f;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
      const float zk = __bfloat162float(z[k]);
      acc += t[k] * (lse - zk);
      if (dlogits)
        dlogits[b * K + k] = __float2bfloat16_rn((expf(zk - lse) * sums[1] - t[k]) * inv_B);
    }
    acc = gpu::block_sum(acc, scratch);
    if (threadIdx.x == 0) row_loss[b] = acc;
  }
}

}  // namespace
}  // namespace deit::kernels
