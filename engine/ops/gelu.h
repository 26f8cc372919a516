#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// Exact (erf) GELU, elementwise.
Tensor gelu(const Tensor& x);

namespace detail {
// The kernels behind gelu(), off the tape, for ops that reuse them (ops::gelu_linear,
// ops::linear_gelu).
Tensor gelu_forward(const Tensor& x);
Tensor gelu_backward(const Tensor& dy, const Tensor& x);  // dx
// GELU's backward where x is a linear layer's output (..., N): dx, and that layer's bias
// gradient (N), the sums of dx over its rows, in one pass.
struct GeluBiasGrads {
  Tensor dx, dbias;
};
GeluBiasGrads gelu_backward_bias_grad(const Tensor& dy, const Tensor& x, const Tensor& bias);
}  // namespace detail

}  // namespace deit::ops
