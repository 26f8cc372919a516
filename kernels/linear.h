// Linear layer y = x W^T + b, the GEMM behind qkv, proj, fc1, fc2, the patch embedding and the
// head. Weights use PyTorch's (out, in) layout so they map one-to-one onto timm's tensors.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// x: (M, K), weight: (N, K), bias: (N) or nullptr  ->  y: (M, N)
template <typename T>
void linear_forward_cpu(const T* x, const T* weight, const T* bias, T* y, int64_t M, int64_t K,
                        int64_t N);

// dy: (M, N)  ->  dx: (M, K), dweight: (N, K), dbias: (N). Each output may be nullptr (not
// wanted); outputs are overwritten, never accumulated into.
template <typename T>
void linear_backward_cpu(const T* dy, const T* x, const T* weight, T* dx, T* dweight, T* dbias,
                         int64_t M, int64_t K, int64_t N);

#if DEIT_HAVE_CUDA
class CublasLt;  // kernels/cuda/cublaslt.h: handle, workspace and plan cache, created once

// CUDA, through cuBLASLt: bf16 x, weight (the bf16 copy of the parameter), bias and y; fp32
// accumulation. The bias rides on cuBLASLt's bias epilogue, so y is written once. GELU is not
// fused here: cuBLASLt's GELU epilogues use the tanh approximation and DeiT III uses the exact erf
// GELU, so fc1's GELU is kernels/cuda/gelu.cu's.
// Sizes: M >= 0 (M == 0 does nothing), K >= 1, N >= 1. bias: 16-byte aligned. Tensor cores need
// every row start 16-byte aligned (K and N multiples of 8, aligned pointers); other shapes run on
// whichever slower cuBLASLt kernel the heuristic offers for the actual alignment, and
// std::invalid_argument naming the GEMM is thrown when it offers none.
void linear_forward_cuda(const bf16_bits* x, const bf16_bits* weight, const bf16_bits* bias,
                         bf16_bits* y, int64_t M, int64_t K, int64_t N, CublasLt& lt,
                         cudaStream_t stream);

// dx: bf16; dweight and dbias: fp32 (they feed the fp32 master weights; dweight straight from the
// GEMM's fp32 accumulators). dbias is a deterministic column sum of dy (fixed row chunks whose
// partial sums go to lt's workspace, then added in a fixed order), in tiles of 8192 columns for
// wider layers. Each output may be nullptr; outputs are overwritten.
void linear_backward_cuda(const bf16_bits* dy, const bf16_bits* x, const bf16_bits* weight,
                          bf16_bits* dx, float* dweight, float* dbias, int64_t M, int64_t K,
                          int64_t N, CublasLt& lt, cudaStream_t stream);
#endif

}  // namespace deit::kernels
