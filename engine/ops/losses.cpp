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
// kernel: the CPU twin (templated; called through a generic lambda). cuda_kernel: the CUDA twin.
template <typename KernelFn, typename CudaKernelFn>
Tensor fused_loss(const char* op, const Tensor& logits, const Tensor& targets, KernelFn kernel,
                  [[maybe_unused]] CudaKernelFn cuda_kernel) {
  check(logits.dim() == 2 && targets.shape() == logits.shape(), op,
        "logits " + logits.describe() + " and targets " + targets.describe() +
            " must both be (B, K)");
  check(!targets.requires_grad(), op, "targets are not differentiable");
  const int64_t B = logits.size(0), K = logits.size(1);
  const bool want_grad = needs_recording({&logits});
  // The loss is an fp32 statistic on CUDA, like the targets; logits and dlogits are bf16.
  Tensor loss = Tensor::empty({1}, detail::fp32_on_cuda(logits), logits.device());
  Tensor dlogits = detail::empty_if(want_grad, logits);
  detail::dispatch(op, {&logits, &targets},
      [&](auto zero) {
        using T = decltype(zero);
        kernel(logits.data<T>(), targets.data<T>(), loss.data<T>(),
               detail::data_or_null<T>(dlogits), B, K);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        Tensor workspace = detail::cuda_workspace(cuda, kernels::loss_cuda_workspace_floats(B, K));
        cuda_kernel(detail::cuda_data<kernels::bf16_bits>(op, "logits", logits),
                    detail::cuda_data<float>(op, "targets", targets), loss.data<float>(),
                    detail::data_or_null<kernels::bf16_bits>(dlogits), B, K,
                    workspace.data<float>(), cuda.stream);
      }));
  if (want_grad)
    record(op, loss, {&logits}, {dlogits}, [](Node& node, const Tensor& dloss) {
      return std::vector<Tensor>{scale_by(node.saved[0], dloss)};
    });
  return loss;
}

}  // namespace

Tensor bce_with_logits(const Tensor& logits, const Tensor& targets) {
  return fused_loss(
      "bce_with_logits", logits, targets,
      [](auto... args) { kernels::bce_with_logits_cpu(args...); },
      DEIT_CUDA_PATH([](auto... args) { kernels::bce_with_logits_cuda(args...); }));
}

Tensor softmax_cross_entropy(const Tensor& logits, const Tensor& targets) {
  return fused_loss(
      "softmax_cross_entropy", logits, targets,
      [](auto... args) { kernels::softmax_cross_entropy_cpu(args...); },
      DEIT_CUDA_PATH([](auto... args) { kernels::softmax_cross_entropy_cuda(args...); }));
}

}  // namespace deit::ops
