// The classification losses, loss and gradient in one pass over bf16 logits, fp32 arithmetic.
//  - BCE with logits (mean over B x K): per element max(z, 0) - z t + log1p(exp(-|z|)) and
//    dz = (sigmoid(z) - t) / (B K); one pass over the row.
//  - Soft-target softmax cross-entropy (mean over B): row max, then sum exp(z - max) and sum t,
//    then the loss sum_k t_k (lse - z_k) and dz = (softmax(z) sum_k t - t) / B; three passes over
//    the row, the second and third from L1 / L2.
// Launch: one block of 256 threads per row (grid-stride over rows, at most 65536 blocks), row loss
// to workspace[b]; then sum_to_scalar (one block) adds the B row losses in index order and scales
// to the mean. Both reductions are deterministic.
// Measured speed: not yet measured on a GPU.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/losses.h"

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

// Shared driver: checks, the empty case, the row kernel, then the mean.
template <typename Launch>
void run_loss(const char* fn, float* loss, int64_t B, int64_t K, float* workspace, float scale,
              cudaStream_t stream, Launch launch_rows) {
  gpu::check_sizes(fn, {B, K});
  if (B == 0 || K == 0) {
    DEIT_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), stream));
    return;
  }
  gpu::check_workspace(fn, workspace, true);
  launch_rows(static_cast<unsigned>(std::min(B, gpu::kMaxBlocks)));
  DEIT_CUDA_CHECK_LAUNCH();
  gpu::sum_to_scalar(workspace, B, scale, loss, stream);
}

}  // namespace

int64_t loss_cuda_workspace_floats(int64_t B, int64_t /*K*/) { return B; }

void bce_with_logits_cuda(const bf16_bits* logits, const float* targets, float* loss,
                          bf16_bits* dlogits, int64_t B, int64_t K, float* workspace,
                          cudaStream_t stream) {
  const float inv_count = static_cast<float>(1.0 / (static_cast<double>(B) * K));
  run_loss("bce_with_logits_cuda", loss, B, K, workspace, inv_count, stream, [&](unsigned grid) {
    bce_rows_kernel<<<grid, gpu::kThreads, 0, stream>>>(
        gpu::as_bf16(logits), targets, gpu::as_bf16(dlogits), workspace, B, K, inv_count);
  });
}

void softmax_cross_entropy_cuda(const bf16_bits* logits, const float* targets, float* loss,
                                bf16_bits* dlogits, int64_t B, int64_t K, float* workspace,
                                cudaStream_t stream) {
  const float inv_B = static_cast<float>(1.0 / static_cast<double>(B));
  run_loss("softmax_cross_entropy_cuda", loss, B, K, workspace, inv_B, stream, [&](unsigned grid) {
    softmax_cross_entropy_rows_kernel<<<grid, gpu::kThreads, 0, stream>>>(
        gpu::as_bf16(logits), targets, gpu::as_bf16(dlogits), workspace, B, K, inv_B);
  });
}

}  // namespace deit::kernels
