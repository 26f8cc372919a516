#include "engine/ops/losses.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "engine/ops/elementwise.h"
#include "kernels/losses.h"

namespace deit::ops {

using detail::check;

namespace {

// Both losses compute their gradient in the forward pass (one read of the logits); the node keeps
// it and scales it by the upstream gradient.
template <typename KernelFn>
Tensor fused_loss(const char* op, const Tensor& logits, const Tensor& targets, KernelFn kernel) {
  check(logits.dim() == 2 && targets.shape() == logits.shape(), op,
        "logits " + logits.describe() + " and targets " + targets.describe() +
            " must both be (B, K)");
  check(!targets.requires_grad(), op, "targets are not differentiable");
  const int64_t B = logits.size(0), K = logits.size(1);
  const bool want_grad = needs_recording({&logits});
  Tensor loss = Tensor::empty({1}, logits.dtype(), logits.device());
  Tensor dlogits = detail::empty_if(want_grad, logits);
  detail::dispatch_cpu_floating(op, {&logits, &targets}, [&](auto zero) {
    using T = decltype(zero);
    kernel(logits.data<T>(), targets.data<T>(), loss.data<T>(), detail::data_or_null<T>(dlogits),
           B, K);
  });
  if (want_grad)
    record(op, loss, {&logits}, {dlogits}, [](Node& node, const Tensor& dloss) {
      return std::vector<Tensor>{scale_by(node.saved[0], dloss)};
    });
  return loss;
}

}  // namespace

Tensor bce_with_logits(const Tensor& logits, const Tensor& targets) {
  return fused_loss("bce_with_logits", logits, targets, [](auto... args) {
    kernels::bce_with_logits_cpu(args...);
  });
}

Tensor soft_cross_entropy(const Tensor& logits, const Tensor& targets) {
  return fused_loss("soft_cross_entropy", logits, targets, [](auto... args) {
    kernels::softmax_cross_entropy_cpu(args...);
  });
}

}  // namespace deit::ops
