#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// Multi-head self-attention (non-causal) over the packed output of the qkv linear.
// qkv: (B, T, 3 * C) viewed as (B, T, 3, heads, C / heads) -> (B, T, C).
// Scale is head_dim^-0.5.
Tensor attention(const Tensor& qkv, int64_t heads);

// attention(linear(x, weight, bias), heads), the qkv projection and the attention of a block, as
// one node: its backward takes the qkv bias gradient from the attention's backward (each block of
// the CUDA kernels sums the dq, dk, dv rows it computes) instead of a pass of its own over dqkv.
// The same values and gradients as the two ops apart (on the CPU the same bits); it keeps what
// they keep (x, and qkv, out and lse for the attention's backward).
Tensor linear_attention(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t heads);

}  // namespace deit::ops
