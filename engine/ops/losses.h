#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// Sigmoid binary cross-entropy with logits on soft targets, mean over batch x classes.
// logits, targets: (B, K) -> scalar (shape {1}). targets are not differentiated.
Tensor bce_with_logits(const Tensor& logits, const Tensor& targets);

// Softmax cross-entropy with soft targets, mean over the batch.
// logits, targets: (B, K) -> scalar (shape {1}).
Tensor softmax_cross_entropy(const Tensor& logits, const Tensor& targets);

}  // namespace deit::ops
