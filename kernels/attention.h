// Non-causal multi-head self-attention over the packed qkv buffer the qkv linear writes:
// out = softmax(Q K^T * scale) V for every (batch, head), with scale = head_dim^-0.5.
// The log-sum-exp of each score row is saved so backward can rebuild the probabilities without
// storing the (T, T) matrix, as a flash-attention kernel does.
#pragma once
#include <cstdint>

namespace deit::kernels {

// qkv: (B, T, 3, H, D)  [timm's layout: qkv linear output viewed as (B, T, 3, heads, head_dim)]
//  ->  out: (B, T, H, D) = (B, T, C), lse: (B, H, T)
template <typename T>
void attention_forward_cpu(const T* qkv, T* out, T* lse, int64_t B, int64_t Tn, int64_t H,
                           int64_t D, double scale);

// dout: (B, T, H, D)  ->  dqkv: (B, T, 3, H, D), overwritten.
template <typename T>
void attention_backward_cpu(const T* qkv, const T* out, const T* lse, const T* dout, T* dqkv,
                            int64_t B, int64_t Tn, int64_t H, int64_t D, double scale);

}  // namespace deit::kernels
