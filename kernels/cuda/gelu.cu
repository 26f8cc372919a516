// Exact (erf) GELU forward and backward on bf16 activations, computed in fp32.
//   forward:  y = x * Phi(x),                      Phi(x) = erfc(-x / sqrt 2) / 2
//   backward: dx = dy * (Phi(x) + x * phi(x)),     phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// The bias add in front of GELU belongs to the fc1 GEMM (cuBLASLt's bias epilogue), not here; the
// bias gradient of fc1 can come from here (gelu_backward_bias_grad_cuda): the column sums of dx,
// taken as dx is written, save the linear layer's own pass over it (ops::linear_gelu).
// Launch: the elementwise launcher (256 threads, grid-stride over 8-element vectors of 16 bytes
// when every pointer is 16-byte aligned, scalar otherwise). In place (y == x, dx == dy) is allowed.
// With the bias gradient: the row layout of the linear layer's bias gradient (linear.cu), per tile
// of at most 8192 columns row_chunks(M, width) blocks of row_threads(width) threads, then
// sum_partials.
// Phi is a polynomial times one exponential, shared with phi (gelu_kernels.cuh says why, and how
// exact). Measured speed (one H200, 2026-12-04, `deit bench kernels`, 50432 rows of 3072, x in
// [-1, 1]), with Phi through erfcf: forward 0.303 ms (48% of the copy bandwidth), backward
// 0.383 ms (57%); through erff (erfcf in the tail): 0.255 ms and 0.332 ms, but in deit3_huge's
// step 0.28 ms a forward where erfcf took 0.18, and Inductor's erf GELU 0.125. The polynomial
// form (commit d925502, x in [-3, 3]): forward 0.184 ms (79%), backward 0.225 ms (97%), 0.290
// with the bias gradient; in deit3_small's step 1.16 ms forward and 1.80 backward a step, where
// Inductor's take 1.35 and 1.83 + 0.77 (its bias gradient). The forward, compute-bound there (SM
// throughput 77% in Nsight), has since lost the range guards of its reciprocal and exponential
// (gelu_kernels.cuh), the backward with the bias gradient loads two rows ahead, and both move 8
// bf16 in one 16-byte load or store where they took four (common_device.cuh): none of it
// measured yet (bench/PREDICTIONS.md).
//
// Files: the device code is kernels/cuda/gelu_kernels.cuh; this file is the host side (argument
// checks, launches). The kernels also run, lane by lane on the host, in the CTest entry
// ops_emulated (tests/emulated/ops_emulated.cpp), which checks them against the CPU twins without a
// GPU; its launches mirror the ones below, so change them together.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/gelu.h"
// The device code, after what it uses.
#include "kernels/cuda/gelu_kernels.cuh"

namespace deit::kernels {

void gelu_forward_cuda(const bf16_bits* x, bf16_bits* y, int64_t n, cudaStream_t stream) {
  gpu::check_sizes("gelu_forward_cuda", {n});
  gpu::launch_elementwise(GeluForwardOp{gpu::as_bf16(x), gpu::as_bf16(y)}, n, gpu::aligned16(x, y),
                          stream);
}

void gelu_backward_cuda(const bf16_bits* dy, const bf16_bits* x, bf16_bits* dx, int64_t n,
                        cudaStream_t stream) {
  gpu::check_sizes("gelu_backward_cuda", {n});
  gpu::launch_elementwise(GeluBackwardOp{gpu::as_bf16(dy), gpu::as_bf16(x), gpu::as_bf16(dx)}, n,
                          gpu::aligned16(dy, x, dx), stream);
}

int64_t gelu_backward_bias_grad_cuda_workspace_floats(int64_t M, int64_t N) {
  const int64_t width = std::min(N, gpu::kMaxRowWidth);  // the widest column tile
  return width > 0 ? gpu::row_chunks(M, width).chunks * width : 0;
}

void gelu_backward_bias_grad_cuda(const bf16_bits* dy, const bf16_bits* x, bf16_bits* dx,
                                  float* dbias, int64_t M, int64_t N, float* workspace,
                                  cudaStream_t stream) {
  const char* fn = "gelu_backward_bias_grad_cuda";
  gpu::check_sizes(fn, {M, N});
  if (N == 0) return;
  if (M == 0) {  // sums over no rows
    DEIT_CUDA_CHECK(cudaMemsetAsync(dbias, 0, N * sizeof(float), stream));
    return;
  }
  gpu::check_workspace(fn, workspace, true);
  const bool vectors = N % kVec == 0 && gpu::aligned16(dy, x, dx, workspace);  // tiles at x8
  gpu::column_sum_tiles(
      M, N, workspace, dbias, stream, [&](int64_t c0, int64_t width, const gpu::RowChunks& part) {
        const auto grid = static_cast<unsigned>(part.chunks);
        const int threads = gpu::row_threads(width);
        const bf16* dy_tile = gpu::as_bf16(dy) + c0;
        const bf16* x_tile = gpu::as_bf16(x) + c0;
        bf16* dx_tile = gpu::as_bf16(dx) + c0;
        if (vectors)
          gelu_backward_column_partials_kernel<kVec><<<grid, threads, 0, stream>>>(
              dy_tile, x_tile, dx_tile, workspace, M, width, N, part.rows_per_chunk);
        else
          gelu_backward_column_partials_kernel<1><<<grid, threads, 0, stream>>>(
              dy_tile, x_tile, dx_tile, workspace, M, width, N, part.rows_per_chunk);
        DEIT_CUDA_CHECK_LAUNCH();
      });
}

}  // namespace deit::kernels
