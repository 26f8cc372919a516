// The classification losses, loss and gradient in one pass over bf16 logits, fp32 arithmetic.
//  - BCE with logits (mean over B x K): per element max(z, 0) - z t + log1p(exp(-|z|)) and
//    dz = (sigmoid(z) - t) / (B K); one pass over the row.
//  - Soft-target softmax cross-entropy (mean over B): row max, then sum exp(z - max) and sum t,
//    then the loss sum_k t_k (lse - z_k) and dz = (softmax(z) sum_k t - t) / B; three passes over
//    the row, the second and third from L1 / L2.
// Launch: one block of 256 threads per row (grid-stride over rows, at most 65536 blocks), row loss
// to workspace[b]; then sum_to_scalar (one block) adds the B row losses in index order and scales
// to the mean. Both reductions are deterministic.
// Measured speed (one H200, 2026-12-04, commit 2868e8c, `deit bench kernels`,
// bench/results/2026-12-04-nvidia-h200-compare-small-base.md): BCE loss + gradient over 256 x 1000
// logits 0.010 ms (launch-bound: 5% of the copy bandwidth), over 16384 x 1000 0.074 ms (1775 GB/s,
// 42% of the 4276 GB/s the same run's copy reached).
//
// Files: the device code is kernels/cuda/losses_kernels.cuh; this file is the host side (argument
// checks, launches). The kernels also run, lane by lane on the host, in the CTest entry
// ops_emulated (tests/emulated/ops_emulated.cpp), which checks them against the CPU twins without a
// GPU; its launches mirror the ones below, so change them together.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/losses.h"
// The device code, after what it uses.
#include "kernels/cuda/losses_kernels.cuh"

namespace deit::kernels {
namespace {

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
