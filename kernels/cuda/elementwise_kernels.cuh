// The device code of the engine's elementwise helpers (kernels/cuda/elementwise.cu says what they
// do and their launch shape): the add, scale-by-device-scalar and fill ops of the elementwise
// launcher, for fp32 and bf16.
//
// Included by elementwise.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh, CUDA's bf16 types and conversions, and the
// built-ins the emulator provides; anything more needs a stand-in there. Each includer is the only
// translation unit of its program with these kernels, hence the unnamed namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels {
namespace {

using gpu::bf16;

template <typename T>
struct AddOp {
  const T* a;
  const T* b;
  T* out;
  template <int N>
  __device__ void apply(int64_t i) const {
    float va[N], vb[N];
    gpu::load<N>(a + i, va);
    gpu::load<N>(b + i, vb);
#pragma unroll
    for (int j = 0; j < N; ++j) va[j] += vb[j];
    gpu::store<N>(out + i, va);
  }
};

template <typename T>
struct ScaleByScalarOp {
  const T* x;
  const float* s;
  T* out;
  template <int N>
  __device__ void apply(int64_t i) const {
    const float factor = *s;
    float v[N];
    gpu::load<N>(x + i, v);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] *= factor;
    gpu::store<N>(out + i, v);
  }
};

template <typename T>
struct FillOp {
  T* out;
  float value;
  template <int N>
  __device__ void apply(int64_t i) const {
    float v[N];
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = value;
    gpu::store<N>(out + i, v);
  }
};

}  // namespace
}  // namespace deit::kernels
