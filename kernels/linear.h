// Linear layer y = x W^T + b, the GEMM behind qkv, proj, fc1, fc2, the patch embedding and the head.
// Weights use PyTorch's (out, in) layout so they map one-to-one onto timm's tensors.
#pragma once
#include <cstdint>

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

}  // namespace deit::kernels
