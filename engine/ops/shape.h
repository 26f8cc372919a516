#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// The same elements under another shape (one dimension may be -1), recorded for autograd.
Tensor reshape(const Tensor& x, const Shape& shape);

}  // namespace deit::ops
