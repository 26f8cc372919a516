#include "engine/ops/layernorm.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/layernorm.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;
using detail::empty_if;

Tensor layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t C = x.size(-1), rows = x.numel() / C;
  check(weight.shape() == Shape{C} && bias.shape() == Shape{C}, "layernorm",
        "weight " + weight.describe() + " / bias " + bias.describe() + " for input " + x.describe());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({rows}, x.dtype(), x.device());
  Tensor rstd = Tensor::empty({rows}, x.dtype(), x.device());
  detail::dispatch_cpu_floating("layernorm", {&x, &weight, &bias}, [&](auto zero) {
    using T = decltype(zero);
    kernels::layernorm_forward_cpu<T>(x.data<T>(), weight.data<T>(), bias.data<T>(), y.data<T>(),
                                      mean.data<T>(), rstd.data<T>(), rows, C, eps);
  });
  if (needs_recording({&x, &weight, &bias}))
    record("layernorm", y, {&x, &weight, &bias}, {x, weight, mean, rstd},
           [rows, C](Node& node, const Tensor& dy) {
             const Tensor &x = node.saved[0], &w = node.saved[1];
             const Tensor &mean = node.saved[2], &rstd = node.saved[3];
             // dx is always computed: the kernel derives dweight/dbias in the same pass.
             Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
             Tensor dw = empty_if(node.needs_input_grad[1], w);
             Tensor db = empty_if(node.needs_input_grad[2], w);
             detail::dispatch_cpu_floating("layernorm backward", {&dy, &x}, [&](auto zero) {
               using T = decltype(zero);
               kernels::layernorm_backward_cpu<T>(dy.data<T>(), x.data<T>(), w.data<T>(),
                                                  mean.data<T>(), rstd.data<T>(), dx.data<T>(),
                                                  data_or_null<T>(dw), data_or_null<T>(db), rows, C);
             });
             return std::vector<Tensor>{dx, dw, db};
           });
  return y;
}

}  // namespace deit::ops
