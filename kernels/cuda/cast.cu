// fp32 <-> bf16 conversion (round to nearest even, NaN stays NaN): master weights to their bf16
// copies, activations to fp32 for the host and the tests.
// Launch: the elementwise launcher (256 threads, grid-stride over 8-element vectors when both
// pointers are 16-byte aligned, scalar tail), one element of work per thread at least.
// Measured speed: not timed alone (it runs outside the step's hot loop).
//
// Files: the device code is kernels/cuda/cast_kernels.cuh; this file is the host side (argument
// checks, launches). The casts also run, lane by lane on the host, in the CTest entry ops_emulated
// (tests/emulated/ops_emulated.cpp), which checks them against the CPU twins without a GPU; its
// launches mirror the ones below, so change them together.
#include "kernels/cast.h"
#include "kernels/cuda/common.cuh"
// The device code, after what it uses.
#include "kernels/cuda/cast_kernels.cuh"

namespace deit::kernels {
namespace {

template <typename From, typename To>
void cast(const From* x, To* y, int64_t n, cudaStream_t stream) {
  gpu::check_sizes("cast", {n});
  gpu::launch_elementwise(CastOp<From, To>{x, y}, n, gpu::aligned16(x, y), stream);
}

}  // namespace

void cast_f32_to_bf16_cuda(const float* x, bf16_bits* y, int64_t n, cudaStream_t stream) {
  cast(x, gpu::as_bf16(y), n, stream);
}

void cast_bf16_to_f32_cuda(const bf16_bits* x, float* y, int64_t n, cudaStream_t stream) {
  cast(gpu::as_bf16(x), y, n, stream);
}

}  // namespace deit::kernels
