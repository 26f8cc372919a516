#include "engine/ops/linear.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/linear.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;
using detail::empty_if;

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check(x.dim() >= 1 && weight.dim() == 2 && weight.size(1) == x.size(-1), "linear",
        "input " + x.describe() + " does not match weight " + weight.describe());
  const int64_t K = x.size(-1), N = weight.size(0), M = x.numel() / K;
  check(!bias.defined() || (bias.dim() == 1 && bias.size(0) == N), "linear",
        "bias " + (bias.defined() ? bias.describe() : "") + " for weight " + weight.describe());
  Shape out_shape = x.shape();
  out_shape.back() = N;
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  detail::dispatch("linear", {&x, &weight, &bias},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::linear_forward_cpu<T>(x.data<T>(), weight.data<T>(), data_or_null<T>(bias),
                                       y.data<T>(), M, K, N);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::linear_forward_cuda(detail::cuda_data<kernels::bf16_bits>("linear", "x", x),
                                     detail::cuda_bf16_weights("linear", "weight", weight),
                                     detail::cuda_bf16_weights("linear", "bias", bias),
                                     y.data<kernels::bf16_bits>(), M, K, N, *cuda.cublas_lt,
                                     cuda.stream);
      }));
  if (needs_recording({&x, &weight, &bias}))
    record("linear", y, {&x, &weight, &bias}, {x, weight, bias},
           [M, K, N](Node& node, const Tensor& dy) {
             const Tensor &x = node.saved[0], &w = node.saved[1], &b = node.saved[2];
             Tensor dx = empty_if(node.needs_input_grad[0], x);
             Tensor dw = detail::empty_param_grad_if(node.needs_input_grad[1], w);
             Tensor db = detail::empty_param_grad_if(node.needs_input_grad[2], b);
             const char* op = "linear backward";
             detail::dispatch(op, {&dy, &x, &w},
                 [&](auto zero) {
                   using T = decltype(zero);
                   kernels::linear_backward_cpu<T>(dy.data<T>(), x.data<T>(), w.data<T>(),
                                                   data_or_null<T>(dx), data_or_null<T>(dw),
                                                   data_or_null<T>(db), M, K, N);
                 },
                 DEIT_CUDA_PATH([&](CudaContext& cuda) {
                   kernels::linear_backward_cuda(
                       detail::cuda_data<kernels::bf16_bits>(op, "dy", dy),
                       detail::cuda_data<kernels::bf16_bits>(op, "x", x),
                       detail::cuda_bf16_weights(op, "weight", w),
                       data_or_null<kernels::bf16_bits>(dx), data_or_null<float>(dw),
                       data_or_null<float>(db), M, K, N, *cuda.cublas_lt, cuda.stream);
                 }));
             return std::vector<Tensor>{dx, dw, db};
           });
  return y;
}

}  // namespace deit::ops
