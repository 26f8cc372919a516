#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// y = x W^T + b over the last dimension. x: (..., K), weight: (N, K), bias: (N) or undefined
// -> y: (..., N)
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// linear(gelu(x), weight, bias) that keeps only x for backward: GELU's output, fc2's input in an
// MLP (4C wide, the largest activation of a block), is computed again in backward instead of
// being held from forward to backward. The same values and gradients as the two ops apart, for
// one more GELU pass in backward (--recompute-gelu).
Tensor gelu_linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// gelu(linear(x, weight, bias)), fc1 of an MLP, as one node: its backward takes the bias
// gradient from GELU's backward pass over the (..., N) activations (the sums of GELU's dx as it
// is written) instead of a pass of its own. The same values and gradients as the two ops apart;
// it keeps what they keep (x, and the linear output for GELU's backward).
Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias);

namespace detail {
// The kernels behind linear(), off the tape, for ops that reuse them.
Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias);
struct LinearGrads {
  Tensor dx, dweight, dbias;  // each only when asked for
};
LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                            const Tensor& bias, bool want_dx, bool want_dweight, bool want_dbias);
}  // namespace detail

}  // namespace deit::ops
