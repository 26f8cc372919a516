#include "engine/ops/layernorm.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/layernorm.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;

Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check(x.dim() >= 1 && x.size(-1) > 0, "layernorm",
        "input " + x.describe() + " has no features to normalise");
  const int64_t C = x.size(-1), rows = x.numel() / C;
  check(
      weight.shape() == Shape{C} && bias.shape() == Shape{C}, "layernorm",
      "weight " + weight.describe() + " / bias " + bias.describe() + " for input " + x.describe());
  // On CUDA x is the fp32 residual stream and y feeds the bf16 branch.
  Tensor y = Tensor::empty(x.shape(), detail::bf16_on_cuda(x), x.device());
  Tensor mean = Tensor::empty({rows}, detail::fp32_on_cuda(x), x.device());
  Tensor rstd = Tensor::empty({rows}, detail::fp32_on_cuda(x), x.device());
  detail::dispatch("layernorm", {&x, &weight, &bias},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::layernorm_forward_cpu<T>(x.data<T>(), weight.data<T>(), bias.data<T>(),
                                          y.data<T>(), mean.data<T>(), rstd.data<T>(), rows, C,
                                          eps);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        const char* op = "layernorm";
        kernels::layernorm_forward_cuda(detail::cuda_data<float>(op, "x", x),
                                        detail::cuda_bf16_weights(op, "weight", weight),
                                        detail::cuda_bf16_weights(op, "bias", bias),
                                        y.data<kernels::bf16_bits>(), mean.data<float>(),
                                        rstd.data<float>(), rows, C, eps, cuda.stream);
      }));
  if (needs_recording({&x, &weight, &bias}))
    record("layernorm", y, {&x, &weight, &bias}, {x, weight, mean, rstd},
           [rows, C](Node& node, const Tensor& dy) {
             const Tensor &x = node.saved[0], &w = node.saved[1];
             const Tensor &mean = node.saved[2], &rstd = node.saved[3];
             // dx is always computed: the kernel derives dweight/dbias in the same pass. It has
             // x's dtype (fp32 on CUDA: the residual stream's gradient).
             Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
             Tensor dw = detail::empty_param_grad_if(node.needs_input_grad[1], w);
             // bias is not saved (backward never reads its values): weight has its shape.
             Tensor db = detail::empty_param_grad_if(node.needs_input_grad[2], w);
             const char* op = "layernorm backward";
             detail::dispatch(op, {&dy, &x},
                 [&](auto zero) {
                   using T = decltype(zero);
                   kernels::layernorm_backward_cpu<T>(dy.data<T>(), x.data<T>(), w.data<T>(),
                                                      mean.data<T>(), rstd.data<T>(),
                                                      dx.data<T>(), data_or_null<T>(dw),
                                                      data_or_null<T>(db), rows, C);
                 },
                 DEIT_CUDA_PATH([&](CudaContext& cuda) {
                   Tensor workspace = detail::cuda_workspace(
                       cuda, kernels::layernorm_backward_cuda_workspace_floats(rows, C));
                   kernels::layernorm_backward_cuda(
                       detail::cuda_data<kernels::bf16_bits>(op, "dy", dy),
                       detail::cuda_data<float>(op, "x", x),
                       detail::cuda_bf16_weights(op, "weight", w), mean.data<float>(),
                       rstd.data<float>(), dx.data<float>(), data_or_null<float>(dw),
                       data_or_null<float>(db), rows, C, workspace.data<float>(), cuda.stream);
                 }));
             return std::vector<Tensor>{dx, dw, db};
           });
  return y;
}

}  // namespace deit::ops
