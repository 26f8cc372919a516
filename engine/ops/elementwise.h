#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// a + b, same shape and dtype.
Tensor add(const Tensor& a, const Tensor& b);

// t * s for a one-element tensor s (not recorded: used inside backward functions).
Tensor scale_by(const Tensor& t, const Tensor& s);

}  // namespace deit::ops
