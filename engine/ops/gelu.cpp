#include "engine/ops/gelu.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/gelu.h"

namespace deit::ops {

Tensor gelu(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  detail::dispatch("gelu", {&x},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::gelu_forward_cpu<T>(x.data<T>(), y.data<T>(), x.numel());
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::gelu_forward_cuda(detail::cuda_data<kernels::bf16_bits>("gelu", "x", x),
                                   y.data<kernels::bf16_bits>(), x.numel(), cuda.stream);
      }));
  if (needs_recording({&x}))
    record("gelu", y, {&x}, {x}, [](Node& node, const Tensor& dy) {
      const Tensor& x = node.saved[0];
      Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
      const char* op = "gelu backward";
      detail::dispatch(op, {&dy, &x},
          [&](auto zero) {
            using T = decltype(zero);
            kernels::gelu_backward_cpu<T>(dy.data<T>(), x.data<T>(), dx.data<T>(), x.numel());
          },
          DEIT_CUDA_PATH([&](CudaContext& cuda) {
            kernels::gelu_backward_cuda(detail::cuda_data<kernels::bf16_bits>(op, "dy", dy),
                                        detail::cuda_data<kernels::bf16_bits>(op, "x", x),
                                        dx.data<kernels::bf16_bits>(), x.numel(), cuda.stream);
          }));
      return std::vector<Tensor>{dx};
    });
  return y;
}

}  // namespace deit::ops
