// Conversions between fp32 and bf16 (round to nearest even, NaN kept NaN), the boundary between
// fp32 master weights / the CPU reference and the bf16 CUDA path.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// x: (n) -> y: (n)
void cast_f32_to_bf16_cpu(const float* x, bf16_bits* y, int64_t n);
void cast_bf16_to_f32_cpu(const bf16_bits* x, float* y, int64_t n);

#if DEIT_HAVE_CUDA
void cast_f32_to_bf16_cuda(const float* x, bf16_bits* y, int64_t n, cudaStream_t stream);
void cast_bf16_to_f32_cuda(const bf16_bits* x, float* y, int64_t n, cudaStream_t stream);
#endif

}  // namespace deit::kernels
