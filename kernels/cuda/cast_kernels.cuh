// The device code of the fp32 <-> bf16 casts (kernels/cuda/cast.cu says what they do and their
// launch shape): the op of the elementwise launcher, one per direction.
//
// Included by cast.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh, CUDA's bf16 types and conversions, and the
// built-ins the emulator provides; anything more needs a stand-in there. Each includer is the only
// translation unit of its program with these kernels, hence the unnamed namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels {
namespace {

template <typename From, typename To>
struct CastOp {
  const From* x;
  To* y;
  template <int N>
  __device__ void apply(int64_t i) const {
    float v[N];
    gpu::load<N>(x + i, v);
    gpu::store<N>(y + i, v);
  }
};

}  // namespace
}  // namespace deit::kernels
