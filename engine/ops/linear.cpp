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
  detail::dispatch_cpu_floating("linear", {&x, &weight, &bias}, [&](auto zero) {
    using T = decltype(zero);
    kernels::linear_forward_cpu<T>(x.data<T>(), weight.data<T>(), data_or_null<T>(bias),
                                   y.data<T>(), M, K, N);
  });
  if (needs_recording({&x, &weight, &bias}))
    record("linear", y, {&x, &weight, &bias}, {x, weight, bias},
           [M, K, N](Node& node, const Tensor& dy) {
             const Tensor &x = node.saved[0], &w = node.saved[1], &b = node.saved[2];
             Tensor dx = empty_if(node.needs_input_grad[0], x);
             Tensor dw = empty_if(node.needs_input_grad[1], w);
             Tensor db = empty_if(node.needs_input_grad[2], b);
             detail::dispatch_cpu_floating("linear backward", {&dy, &x, &w}, [&](auto zero) {
               using T = decltype(zero);
               kernels::linear_backward_cpu<T>(dy.data<T>(), x.data<T>(), w.data<T>(),
                                               data_or_null<T>(dx), data_or_null<T>(dw),
                                               data_or_null<T>(db), M, K, N);
             });
             return std::vector<Tensor>{dx, dw, db};
           });
  return y;
}

}  // namespace deit::ops
