// Exact (erf) GELU forward and backward on bf16 activations, computed in fp32.
//   forward:  y = x * Phi(x),                      Phi(x) = erfc(-x / sqrt 2) / 2
//   backward: dx = dy * (Phi(x) + x * phi(x)),     phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// The bias add in front of GELU belongs to the fc1 GEMM (cuBLASLt's bias epilogue), not here.
// Launch: the elementwise launcher (256 threads, grid-stride over 8-element vectors of 16 bytes
// when every pointer is 16-byte aligned, scalar otherwise). In place (y == x, dx == dy) is allowed.
// Measured speed: not yet measured on a GPU.
#include "kernels/cuda/common.cuh"
#include "kernels/gelu.h"

namespace deit::kernels {
namespace {

using gpu::bf16;

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// Through erfc, as the CPU twin: 1 + erf(x / sqrt 2) cancels in fp32 in the negative tail, to
// exactly 0 below x = -5.6, where GELU is still about -6e-8 (a bf16 normal), not 0.
__device__ __forceinline__ float gaussian_cdf(float x) { return 0.5f * erfcf(-x * kInvSqrt2); }

struct GeluForwardOp {
  const bf16* x;
  bf16* y;
  template <int N>
  __device__ void apply(int64_t i) const {
    float v[N];
    gpu::load<N>(x + i, v);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] *= gaussian_cdf(v[j]);
    gpu::store<N>(y + i, v);
  }
};

struct GeluBackwardOp {
  const bf16* dy;
  const bf16* x;
  bf16* dx;
  template <int N>
  __device__ void apply(int64_t i) const {
    float g[N], v[N];
    gpu::load<N>(dy + i, g);
    gpu::load<N>(x + i, v);
#pragma unroll
    for (int j = 0; j < N; ++j)
      g[j] *= gaussian_cdf(v[j]) + v[j] * kInvSqrt2Pi * expf(-0.5f * v[j] * v[j]);
    gpu::store<N>(dx + i, g);
  }
};

}  // namespace

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
