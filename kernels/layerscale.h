// The residual update of a DeiT III block, fused: out = x + keep_scale[b] * gamma[c] * branch.
// gamma is LayerScale (per channel); keep_scale is stochastic depth (drop-path) per sample:
// 0 for a dropped sample, 1/(1-rate) for a kept one, 1 everywhere at eval or with rate 0.
// The gradient with respect to x is dout itself, so backward only produces dbranch and dgamma.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// x, branch: (B, T, C), gamma: (C), keep_scale: (B)  ->  out: (B, T, C)
template <typename T>
void layerscale_residual_forward_cpu(const T* x, const T* branch, const T* gamma,
                                     const T* keep_scale, T* out, int64_t B, int64_t Tn, int64_t C);

// dout: (B, T, C)  ->  dbranch: (B, T, C), dgamma: (C). Either may be nullptr.
template <typename T>
void layerscale_residual_backward_cpu(const T* dout, const T* branch, const T* gamma,
                                      const T* keep_scale, T* dbranch, T* dgamma, int64_t B,
                                      int64_t Tn, int64_t C);

#if DEIT_HAVE_CUDA
// CUDA: x, branch, out, dout, dbranch in bf16; gamma is the bf16 copy of the parameter;
// keep_scale (B) is fp32; dgamma is fp32 (it feeds the fp32 master weight), summed over rows
// deterministically: same inputs, same bits. Forward: out may alias x (in-place residual update).
void layerscale_residual_forward_cuda(const bf16_bits* x, const bf16_bits* branch,
                                      const bf16_bits* gamma, const float* keep_scale,
                                      bf16_bits* out, int64_t B, int64_t Tn, int64_t C,
                                      cudaStream_t stream);

// Backward needs device scratch for the per-chunk column partials of dgamma: `workspace` holds
// at least layerscale_residual_backward_cuda_workspace_floats(B, Tn, C) floats (nullptr is fine
// when dgamma is nullptr); it is not read before written. C <= 8192 (std::invalid_argument beyond).
int64_t layerscale_residual_backward_cuda_workspace_floats(int64_t B, int64_t Tn, int64_t C);
void layerscale_residual_backward_cuda(const bf16_bits* dout, const bf16_bits* branch,
                                       const bf16_bits* gamma, const float* keep_scale,
                                       bf16_bits* dbranch, float* dgamma, int64_t B, int64_t Tn,
                                       int64_t C, float* workspace, cudaStream_t stream);
#endif

}  // namespace deit::kernels
