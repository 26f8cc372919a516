#include "engine/ops/gelu.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/gelu.h"

namespace deit::ops {

namespace detail {

Tensor gelu_forward(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  dispatch("gelu", {&x},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::gelu_forward_cpu<T>(x.data<T>(), y.data<T>(), x.numel());
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        // The operand check first: arguments are evaluated in no fixed order, and y.data would
        // otherwise fail with a message that names no operand.
        const auto* xs = cuda_data<kernels::bf16_bits>("gelu", "x", x);
        kernels::gelu_forward_cuda(xs, y.data<kernels::bf16_bits>(), x.numel(), cuda.stream);
      }));
  return y;
}

Tensor gelu_backward(const Tensor& dy, const Tensor& x) {
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  const char* op = "gelu backward";
  dispatch(op, {&dy, &x},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::gelu_backward_cpu<T>(dy.data<T>(), x.data<T>(), dx.data<T>(), x.numel());
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        const auto* dys = cuda_data<kernels::bf16_bits>(op, "dy", dy);
        const auto* xs = cuda_data<kernels::bf16_bits>(op, "x", x);
        kernels::gelu_backward_cuda(dys, xs, dx.data<kernels::bf16_bits>(), x.numel(), cuda.stream);
      }));
  return dx;
}

GeluBiasGrads gelu_backward_bias_grad(const Tensor& dy, const Tensor& x, const Tensor& bias) {
  check(x.dim() >= 1 && x.size(-1) > 0, "gelu backward",
        "input " + x.describe() + " has no features");
  const int64_t N = x.size(-1), M = x.numel() / N;
  check(bias.dim() == 1 && bias.size(0) == N, "gelu backward",
        "bias " + bias.describe() + " for " + x.describe());
  GeluBiasGrads g{Tensor::empty(x.shape(), x.dtype(), x.device()), empty_param_grad_if(true, bias)};
  const char* op = "gelu backward";
  dispatch(
      op, {&dy, &x},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::gelu_backward_bias_grad_cpu<T>(dy.data<T>(), x.data<T>(), g.dx.data<T>(),
                                                g.dbias.data<T>(), M, N);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        const auto* dys = cuda_data<kernels::bf16_bits>(op, "dy", dy);
        const auto* xs = cuda_data<kernels::bf16_bits>(op, "x", x);
        Tensor workspace =
            cuda_workspace(cuda, kernels::gelu_backward_bias_grad_cuda_workspace_floats(M, N));
        kernels::gelu_backward_bias_grad_cuda(dys, xs, g.dx.data<kernels::bf16_bits>(),
                                              g.dbias.data<float>(), M, N, workspace.data<float>(),
                                              cuda.stream);
      }));
  return g;
}

}  // namespace detail

Tensor gelu(const Tensor& x) {
  Tensor y = detail::gelu_forward(x);
  if (needs_recording({&x}))
    record("gelu", y, {&x}, {x}, [](Node& node, const Tensor& dy) {
      return std::vector<Tensor>{detail::gelu_backward(dy, node.saved[0])};
    });
  return y;
}

}  // namespace deit::ops
