// Exact GELU, x * Phi(x) with the Gaussian CDF through erf (not the tanh approximation): DeiT III
// uses nn.GELU's default.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// x: (n) -> y: (n)
template <typename T>
void gelu_forward_cpu(const T* x, T* y, int64_t n);

// dy, x: (n) -> dx: (n), dx = dy * (Phi(x) + x * phi(x))
template <typename T>
void gelu_backward_cpu(const T* dy, const T* x, T* dx, int64_t n);

#if DEIT_HAVE_CUDA
// CUDA: bf16 in and out, fp32 arithmetic. In place (y == x, dx == dy) is allowed.
void gelu_forward_cuda(const bf16_bits* x, bf16_bits* y, int64_t n, cudaStream_t stream);
void gelu_backward_cuda(const bf16_bits* dy, const bf16_bits* x, bf16_bits* dx, int64_t n,
                        cudaStream_t stream);
#endif

}  // namespace deit::kernels
