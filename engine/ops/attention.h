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

// The class token's row of attention(qkv, heads) alone: qkv (B, T, 3 * C) -> (B, 1, C), the class
// token's (token 0's) query against every token's key and value. Its gradient reaches the keys and
// values of every token and the query of the class token only. About T times less work than the
// whole attention: a ViT's last block needs nothing more, as the head reads the class token alone
// (model/vit.cpp).
Tensor class_attention(const Tensor& qkv, int64_t heads);

// class_attention(linear(x, weight, bias), heads) as one node, as linear_attention is for the
// whole attention.
Tensor linear_class_attention(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              int64_t heads);

}  // namespace deit::ops
