#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// Exact (erf) GELU, elementwise.
Tensor gelu(const Tensor& x);

namespace detail {
// The kernels behind gelu(), off the tape, for ops that reuse them (ops::gelu_linear).
Tensor gelu_forward(const Tensor& x);
Tensor gelu_backward(const Tensor& dy, const Tensor& x);  // dx
}  // namespace detail

}  // namespace deit::ops
