#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// a + b, same shape and dtype.
Tensor add(const Tensor& a, const Tensor& b);

// t * s for a one-element tensor s on t's device (not recorded: used inside backward functions).
// On CUDA, s is fp32 and is read on the device; t is fp32 or bf16.
Tensor scale_by(const Tensor& t, const Tensor& s);

}  // namespace deit::ops
