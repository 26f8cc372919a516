// The device code of the exact (erf) GELU (kernels/cuda/gelu.cu says what it computes and its
// launch shape): the forward and backward ops of the elementwise launcher, and the backward kernel
// that also sums fc1's bias-gradient partials.
//
// Included by gelu.cu after kernels/cuda/mma.cuh (its ptx:: special-function wrappers), and by
// the emulated test (tests/emulated/ops_emulated.cpp) after tests/emulated/cuda_emulator.h, which
// runs these kernels lane by lane on machines without a GPU and defines those wrappers' twins. So
// the code here uses only common_device.cuh, CUDA's bf16 types and conversions, the ptx::
// wrappers, and the built-ins the emulator provides; anything more needs a stand-in there. Each
// includer is the only translation unit of its program with these kernels, hence the unnamed
// namespace.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;

constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kMinusHalfLog2e = -0.72134752044448170f;  // exp(-x^2 / 2) = 2^(this x^2)

// Phi(x) and exp(-x^2 / 2), the normal CDF and (but for its 1 / sqrt(2 pi)) density, without a
// branch on x and with one exponential:
//   Phi(-|x|) = t exp(-x^2 / 2) S(t),   t = 1 / (1 + |x| / (2 sqrt 2)),
// S a degree-6 polynomial fitted to erfc(u) exp(u^2) / (2 t), u = |x| / sqrt 2, for the least
// worst relative error (1.1e-6; scripts/fit_gelu_phi.py derives the coefficients and checks the
// float32 arithmetic below over every bf16 x: GELU within 2.2e-6 of exact). The relative error
// holds deep in the negative tail, where 1 + erf(x / sqrt 2) would cancel to 0 (under x = -5.6)
// while GELU is still a bf16 normal; for x >= 0, Phi = 1 - Phi(-x). Where x^2 / 2 leaves fp32's
// range (|x| > 13.2), the exponential and so the tail flush to 0: GELU(-13.2) is about 1e-38.
// Why not the math library (one H200, 2026-12-04): Phi through erfcf left GELU compute-bound at
// under half the copy bandwidth; through erff (erfcf in the tail) it was faster on inputs in
// [-1, 1] but slower in deit3_huge's step (0.28 ms a forward, from 0.18), its speed depending on
// the data, as branches inside erff would make it. This form has none. Its reciprocal and
// exponential are the bare MUFU instructions (ptx::rcp_ftz, ptx::exp2_ftz): __fdividef and
// exp2f wrapped each in range guards (compares, a select, predicated multiplies: 7 instructions an
// element, about a quarter of the forward's in sm_90 SASS) that never fire here: the divisor is at
// least 1, and exponents under -126 are the tail flushed to 0 anyway.
struct NormalCdf {
  float cdf;       // Phi(x)
  float gaussian;  // exp(-x^2 / 2)
};
__device__ __forceinline__ NormalCdf normal_cdf(float x) {
  // The fast reciprocal (1 ulp; t in (0, 1]): the IEEE one costs a dozen instructions per
  // element, and GELU has few to spare under the copy bandwidth.
  const float t = ptx::rcp_ftz(1.f + 0.35355339059327377f * fabsf(x));
  const float gaussian = ptx::exp2_ftz(kMinusHalfLog2e * x * x);
  float s = 0.044720292f;
  s = s * t - 0.1805508f;
  s = s * t + 0.19767576f;
  s = s * t + 0.016768182f;
  s = s * t + 0.14157249f;
  s = s * t + 0.13863648f;
  s = s * t + 0.14117701f;
  const float tail = t * gaussian * s;
  return {x < 0.f ? tail : 1.f - tail, gaussian};
}

// dy * GELU'(x) = dy * (Phi(x) + x phi(x)).
__device__ __forceinline__ float gelu_backward_value(float dy, float x) {
  const NormalCdf phi = normal_cdf(x);
  return dy * (phi.cdf + x * kInvSqrt2Pi * phi.gaussian);
}

struct GeluForwardOp {
  const bf16* x;
  bf16* y;
  template <int N>
  __device__ void apply(int64_t i) const {
    float v[N];
    gpu::load<N>(x + i, v);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] *= normal_cdf(v[j]).cdf;
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
    for (int j = 0; j < N; ++j) g[j] = gelu_backward_value(g[j], v[j]);
    gpu::store<N>(dx + i, g);
  }
};

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) of a (rows, C) tile of wider matrices
// whose rows lie ld elements apart (row layout, common_device.cuh): dx = dy * GELU'(x), stored in
// bf16, and the column sums of dx as stored to partials[chunk * C + c], which sum_partials then
// adds. The sums run over the rows in order, as column_partials_kernel (common_kernels.cuh) sums a
// stored dx: the same bits. A thread loads kGeluRowsAhead rows before working on them: an H200
// measured this kernel at 76% of the copy bandwidth a row at a time (0.286 ms at 50432 x 3072,
// bench/results/2026-12-04-nvidia-h200-compare-small-base-3.md) against the elementwise backward's
// 97%: its row_chunks blocks hold about 31 warps an SM, each waiting on 32 bytes a row
// (sm_90 SASS issues both rows' loads together since the column test moved out of the row loop,
// 2026-12-05; before, each row's loads waited for the previous row's use). The scalar path (odd
// widths, no ViT's) keeps to a row at a time.
template <int V>
constexpr int kGeluRowsAhead = V == kVec ? 2 : 1;

template <int V>
__global__ void __launch_bounds__(1024)
    gelu_backward_column_partials_kernel(const bf16* dy, const bf16* x, bf16* dx, float* partials,
                                         int64_t rows, int64_t C, int64_t ld,
                                         int64_t rows_per_chunk) {
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float acc[kVec] = {};
  if (gpu::slot_column<V>(0) < C) {  // a thread past the row's columns has nothing to do
    for (int64_t r = r0; r < r1; r += kGeluRowsAhead<V>) {
      float g[kGeluRowsAhead<V>][kVec], v[kGeluRowsAhead<V>][kVec];
#pragma unroll
      for (int i = 0; i < kGeluRowsAhead<V>; ++i) {  // past the chunk: its last row again
        const int64_t row = min(r + i, r1 - 1);
        gpu::load_owned_row<V>(dy + row * ld, C, g[i]);
        gpu::load_owned_row<V>(x + row * ld, C, v[i]);
      }
#pragma unroll
      for (int i = 0; i < kGeluRowsAhead<V>; ++i) {
        if (r + i >= r1) break;
          // Rounded to bf16 as stored, a pair at a time; slots past C hold dy = 0, so they add 0.
#pragma unroll
        for (int e = 0; e < kVec; e += 2) {
          const uint32_t bits = gpu::bf16x2_bits(gelu_backward_value(g[i][e], v[i][e]),
                                                 gelu_backward_value(g[i][e + 1], v[i][e + 1]));
          g[i][e] = gpu::bits_to_float(bits << 16);
          g[i][e + 1] = gpu::bits_to_float(bits & 0xffff0000u);
          acc[e] += g[i][e];
          acc[e + 1] += g[i][e + 1];
        }
        gpu::store_row<V>(dx + (r + i) * ld, C, g[i]);
      }
    }
  }
  gpu::store_row<V>(partials + blockIdx.x * C, C, acc);
}

}  // namespace
}  // namespace deit::kernels
