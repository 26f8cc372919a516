// Exact (erf) GELU forward and backward on bf16 activations, computed in fp32.
//   forward:  y = x * Phi(x),                      Phi(x) = erfc(-x / sqrt 2) / 2
//   backward: dx = dy * (Phi(x) + x * phi(x)),     phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// The bias add in front of GELU belongs to the fc1 GEMM (cuBLASLt's bias epilogue), not here.
// Launch: the elementwise launcher (256 threads, grid-stride over 8-element vectors of 16 bytes
// when every pointer is 16-byte aligned, scalar otherwise). In place (y == x, dx == dy) is allowed.
// Phi is a polynomial times one exponential, shared with phi (gelu_kernels.cuh says why, and how
// exact). Measured speed (one H200, 2026-12-04, `deit bench kernels`, 50432 rows of 3072, x in
// [-1, 1]), with Phi through erfcf: forward 0.303 ms (48% of the copy bandwidth), backward
// 0.383 ms (57%); through erff (erfcf in the tail): 0.255 ms and 0.332 ms, but in deit3_huge's
// step 0.28 ms a forward where erfcf took 0.18, and Inductor's erf GELU 0.125. The polynomial
// form is not yet measured.
//
// Files: the device code is kernels/cuda/gelu_kernels.cuh; this file is the host side (argument
// checks, launches). The kernels also run, lane by lane on the host, in the CTest entry
// ops_emulated (tests/emulated/ops_emulated.cpp), which checks them against the CPU twins without a
// GPU; its launches mirror the ones below, so change them together.
#include "kernels/cuda/common.cuh"
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

}  // namespace deit::kernels
