#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// Exact (erf) GELU, elementwise.
Tensor gelu(const Tensor& x);

}  // namespace deit::ops
