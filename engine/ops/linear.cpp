#include "engine/ops/linear.h"

#include "engine/autograd.h"
#include "engine/ops/gelu.h"
#include "engine/ops/op_utils.h"
#include "kernels/linear.h"

namespace deit::ops {

namespace detail {

Tensor linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check(x.dim() >= 1 && weight.dim() == 2 && weight.size(1) == x.size(-1), "linear",
        "input " + x.describe() + " does not match weight " + weight.describe());
  // The rows are x.numel() / K, here and in backward.
  check(x.size(-1) > 0, "linear", "input " + x.describe() + " has no features");
  const int64_t K = x.size(-1), N = weight.size(0), M = x.numel() / K;
  check(!bias.defined() || (bias.dim() == 1 && bias.size(0) == N), "linear",
        "bias " + (bias.defined() ? bias.describe() : "") + " for weight " + weight.describe());
  Shape out_shape = x.shape();
  out_shape.back() = N;
  // The kernel's dtype, not x's: a wrong x then fails its own check below, by name.
  Tensor y = Tensor::empty(out_shape, bf16_on_cuda(x), x.device());
  dispatch("linear", {&x, &weight, &bias},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::linear_forward_cpu<T>(x.data<T>(), weight.data<T>(), data_or_null<T>(bias),
                                       y.data<T>(), M, K, N);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::linear_forward_cuda(cuda_data<kernels::bf16_bits>("linear", "x", x),
                                     cuda_bf16_weights("linear", "weight", weight),
                                     cuda_bf16_weights("linear", "bias", bias),
                                     y.data<kernels::bf16_bits>(), M, K, N, *cuda.cublas_lt,
                                     cuda.stream);
      }));
  return y;
}

LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                            const Tensor& bias, bool want_dx, bool want_dweight, bool want_dbias) {
  const int64_t K = x.size(-1), N = weight.size(0), M = x.numel() / K;
  LinearGrads g{empty_if(want_dx, x), empty_param_grad_if(want_dweight, weight),
                empty_param_grad_if(want_dbias, bias)};
  const char* op = "linear backward";
  dispatch(op, {&dy, &x, &weight},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::linear_backward_cpu<T>(dy.data<T>(), x.data<T>(), weight.data<T>(),
                                        data_or_null<T>(g.dx), data_or_null<T>(g.dweight),
                                        data_or_null<T>(g.dbias), M, K, N);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::linear_backward_cuda(
            cuda_data<kernels::bf16_bits>(op, "dy", dy), cuda_data<kernels::bf16_bits>(op, "x", x),
            cuda_bf16_weights(op, "weight", weight), data_or_null<kernels::bf16_bits>(g.dx),
            data_or_null<float>(g.dweight), data_or_null<float>(g.dbias), M, K, N,
            *cuda.cublas_lt, cuda.stream);
      }));
  return g;
}

}  // namespace detail

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Tensor y = detail::linear_forward(x, weight, bias);
  if (needs_recording({&x, &weight, &bias}))
    record("linear", y, {&x, &weight, &bias}, {x, weight, bias},
           [](Node& node, const Tensor& dy) {
             detail::LinearGrads g = detail::linear_backward(
                 dy, node.saved[0], node.saved[1], node.saved[2], node.needs_input_grad[0],
                 node.needs_input_grad[1], node.needs_input_grad[2]);
             return std::vector<Tensor>{g.dx, g.dweight, g.dbias};
           });
  return y;
}

Tensor gelu_linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Tensor y = detail::linear_forward(detail::gelu_forward(x), weight, bias);  // gelu(x) dies here
  if (needs_recording({&x, &weight, &bias}))
    record("gelu_linear", y, {&x, &weight, &bias}, {x, weight, bias},
           [](Node& node, const Tensor& dy) {
             const Tensor &x = node.saved[0], &weight = node.saved[1], &bias = node.saved[2];
             const Tensor activated = detail::gelu_forward(x);  // again, as forward made it
             detail::LinearGrads g = detail::linear_backward(
                 dy, activated, weight, bias, node.needs_input_grad[0], node.needs_input_grad[1],
                 node.needs_input_grad[2]);
             Tensor dx = g.dx.defined() ? detail::gelu_backward(g.dx, x) : Tensor();
             return std::vector<Tensor>{dx, g.dweight, g.dbias};
           });
  return y;
}

Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Tensor h = detail::linear_forward(x, weight, bias);
  Tensor y = detail::gelu_forward(h);
  if (needs_recording({&x, &weight, &bias}))
    record("linear_gelu", y, {&x, &weight, &bias}, {x, weight, bias, h},
           [](Node& node, const Tensor& dy) {
             const Tensor &x = node.saved[0], &weight = node.saved[1], &bias = node.saved[2],
                          &h = node.saved[3];
             const bool want_dbias = node.needs_input_grad[2];
             Tensor dh, dbias;
             if (want_dbias) {
               detail::GeluBiasGrads g = detail::gelu_backward_bias_grad(dy, h, bias);
               dh = std::move(g.dx);
               dbias = std::move(g.dbias);
             } else {
               dh = detail::gelu_backward(dy, h);
             }
             detail::LinearGrads g =
                 detail::linear_backward(dh, x, weight, bias, node.needs_input_grad[0],
                                         node.needs_input_grad[1], /*want_dbias=*/false);
             return std::vector<Tensor>{g.dx, g.dweight, dbias};
           });
  return y;
}

}  // namespace deit::ops
