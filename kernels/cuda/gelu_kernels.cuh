// The device code of the exact (erf) GELU (kernels/cuda/gelu.cu says what it computes and its
// launch shape): the forward and backward ops of the elementwise launcher.
//
// Included by gelu.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
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

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// 1 + erf(x / sqrt 2) where that is exact enough, erfc(-x / sqrt 2) (the CPU twin's form) in the
// negative tail. erf is the cheaper of the two (no division), and on an H200 the erfc form left
// GELU compute-bound at under half the copy bandwidth. Above x = -3, Phi >= 1.3e-3 and the
// rounding of 1 + erf (3e-8) is within 2.2e-5 of it, far under bf16's 3.9e-3; below, 1 + erf
// cancels (to exactly 0 under x = -5.6, where GELU is still about -6e-8, a bf16 normal), and erfc
// keeps every digit.
__device__ __forceinline__ float gaussian_cdf(float x) {
  return x > -3.f ? 0.5f * (1.f + erff(x * kInvSqrt2)) : 0.5f * erfcf(-x * kInvSqrt2);
}

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
}  // namespace deit::kernels
