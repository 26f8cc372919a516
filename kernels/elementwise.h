// Elementwise arithmetic the engine itself needs (gradient accumulation, scaling by an upstream
// scalar gradient, filling a tensor with a constant). The CPU side needs fewer twins: its scalar
// is already on the host, so scale_cpu takes it by value (the twin of
// scale_by_device_scalar_cuda), and a host fill is std::fill (Tensor::fill_, engine/tensor.cpp).
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// a, b: (n) -> out: (n) = a + b. out may alias a or b.
template <typename T>
void add_cpu(const T* a, const T* b, T* out, int64_t n);

// x: (n) -> out: (n) = x * s. out may alias x.
template <typename T>
void scale_cpu(const T* x, T s, T* out, int64_t n);

#if DEIT_HAVE_CUDA
// CUDA, fp32 arithmetic whatever the storage type; out may alias a, b or x.
// add: fp32 for parameter gradients and the residual stream's (fp32 on CUDA, kernels/layerscale.h),
// bf16 for the gradients of branch activations that feed two ops.
void add_cuda(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream);
void add_cuda(const bf16_bits* a, const bf16_bits* b, bf16_bits* out, int64_t n,
              cudaStream_t stream);

// x * s[0] where s is a device scalar (an upstream gradient that stays on the device, so the
// backward pass never waits for the host).
void scale_by_device_scalar_cuda(const float* x, const float* s, float* out, int64_t n,
                                 cudaStream_t stream);
void scale_by_device_scalar_cuda(const bf16_bits* x, const float* s, bf16_bits* out, int64_t n,
                                 cudaStream_t stream);

// out[i] = value, without a host-to-device copy (so that it may run inside a captured step).
void fill_cuda(float* out, float value, int64_t n, cudaStream_t stream);
void fill_cuda(bf16_bits* out, float value, int64_t n, cudaStream_t stream);
#endif

}  // namespace deit::kernels
