#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// Multi-head self-attention (non-causal) over the packed output of the qkv linear.
// qkv: (B, T, 3 * C) viewed as (B, T, 3, heads, C / heads) -> (B, T, C).
// Scale is head_dim^-0.5.
Tensor attention(const Tensor& qkv, int64_t heads);

}  // namespace deit::ops
