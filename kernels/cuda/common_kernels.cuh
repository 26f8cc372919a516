// The device code of the two reductions every kernel family shares (kernels/cuda/common.cu says
// what each adds and its launch shape): sum_partials_kernel, the second stage of every
// deterministic column sum, and sum_to_scalar_kernel, the mean of the losses.
//
// Included by common.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh and the built-ins the emulator provides; anything
// more needs a stand-in there. Each includer is the only translation unit of its program with
// these kernels, hence the unnamed namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels::gpu {
namespace {

constexpr int kPartialCols = 8;
constexpr int kPartialLanes = 128;
constexpr int kPartialThreads = kPartialCols * kPartialLanes;
constexpr int kScalarThreads = 1024;

__global__ void __launch_bounds__(kPartialThreads)
    sum_partials_kernel(const float* partials, int64_t chunks, int64_t C, float* out) {
  __shared__ float acc[kPartialLanes][kPartialCols];
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kPartialCols + x;
  float s = 0.f;
  if (c < C)
    for (int64_t k = y; k < chunks; k += kPartialLanes) s += partials[k * C + c];
  acc[y][x] = s;
  __syncthreads();
#pragma unroll
  for (int half = kPartialLanes / 2; half > 0; half /= 2) {
    if (y < half) acc[y][x] += acc[y + half][x];
    __syncthreads();
  }
  if (y == 0 && c < C) out[c] = acc[0][x];
}

__global__ void __launch_bounds__(kScalarThreads)
    sum_to_scalar_kernel(const float* v, int64_t n, float scale, float* out) {
  __shared__ float scratch[32];
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = s * scale;
}

}  // namespace
}  // namespace deit::kernels::gpu
