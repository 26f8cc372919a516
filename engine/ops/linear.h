#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// y = x W^T + b over the last dimension. x: (..., K), weight: (N, K), bias: (N) or undefined
// -> y: (..., N)
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

}  // namespace deit::ops
