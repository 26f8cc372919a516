#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// LayerNorm over the last dimension. x: (..., C), weight, bias: (C) -> (..., C)
Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);

}  // namespace deit::ops
