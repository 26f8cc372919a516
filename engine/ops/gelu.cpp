#include "engine/ops/gelu.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/gelu.h"

namespace deit::ops {

Tensor gelu(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  detail::dispatch_cpu_floating("gelu", {&x}, [&](auto zero) {
    using T = decltype(zero);
    kernels::gelu_forward_cpu<T>(x.data<T>(), y.data<T>(), x.numel());
  });
  if (needs_recording({&x}))
    record("gelu", y, {&x}, {x}, [](Node& node, const Tensor& dy) {
      const Tensor& x = node.saved[0];
      Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
      detail::dispatch_cpu_floating("gelu backward", {&dy, &x}, [&](auto zero) {
        using T = decltype(zero);
        kernels::gelu_backward_cpu<T>(dy.data<T>(), x.data<T>(), dx.data<T>(), x.numel());
      });
      return std::vector<Tensor>{dx};
    });
  return y;
}

}  // namespace deit::ops
