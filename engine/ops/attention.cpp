#include "engine/ops/attention.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops/linear.h"
#include "engine/ops/op_utils.h"
#include "kernels/attention.h"

namespace deit::ops {

using detail::check;

namespace {

// The attention's sizes, from qkv (B, T, 3 * heads * head_dim).
struct AttentionShape {
  int64_t B, Tn, heads, C, D;
  double scale;
};

AttentionShape attention_shape(const Tensor& qkv, int64_t heads) {
  check(qkv.dim() == 3 && heads > 0 && qkv.size(2) % (3 * heads) == 0, "attention",
        "qkv " + qkv.describe() + " is not (B, T, 3 * heads * head_dim) for " +
            std::to_string(heads) + " heads");
  const int64_t C = qkv.size(2) / 3, D = C / heads;
  return {qkv.size(0), qkv.size(1), heads, C, D, 1.0 / std::sqrt(static_cast<double>(D))};
}

struct AttentionOutputs {
  Tensor out, lse;
};

AttentionOutputs attention_forward(const Tensor& qkv, const AttentionShape& s) {
  // The kernel's dtype, not qkv's: a wrong qkv then fails its own check below, by name.
  AttentionOutputs o{Tensor::empty({s.B, s.Tn, s.C}, detail::bf16_on_cuda(qkv), qkv.device()),
                     Tensor::empty({s.B, s.heads, s.Tn}, detail::fp32_on_cuda(qkv), qkv.device())};
  detail::dispatch(
      "attention", {&qkv},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::attention_forward_cpu<T>(qkv.data<T>(), o.out.data<T>(), o.lse.data<T>(), s.B,
                                          s.Tn, s.heads, s.D, s.scale);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::attention_forward_cuda(
            detail::cuda_data<kernels::bf16_bits>("attention", "qkv", qkv),
            o.out.data<kernels::bf16_bits>(), o.lse.data<float>(), s.B, s.Tn, s.heads, s.D, s.scale,
            cuda.stream);
      }));
  return o;
}

struct AttentionGrads {
  Tensor dqkv, dbias;  // dbias (3 C) only when asked for, in the type of a gradient of `bias`
};

AttentionGrads attention_backward(const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                  const Tensor& lse, const AttentionShape& s, const Tensor* bias) {
  AttentionGrads g{Tensor::empty(qkv.shape(), qkv.dtype(), qkv.device()),
                   bias ? detail::empty_param_grad_if(true, *bias) : Tensor()};
  const char* op = "attention backward";
  detail::dispatch(
      op, {&dout, &qkv},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::attention_backward_cpu<T>(
            qkv.data<T>(), out.data<T>(), lse.data<T>(), dout.data<T>(), g.dqkv.data<T>(),
            detail::data_or_null<T>(g.dbias), s.B, s.Tn, s.heads, s.D, s.scale);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        Tensor workspace = detail::cuda_workspace(
            cuda, kernels::attention_backward_cuda_workspace_floats(s.B, s.Tn, s.heads, s.D));
        kernels::attention_backward_cuda(
            qkv.data<kernels::bf16_bits>(), out.data<kernels::bf16_bits>(), lse.data<float>(),
            detail::cuda_data<kernels::bf16_bits>(op, "dout", dout),
            g.dqkv.data<kernels::bf16_bits>(), detail::data_or_null<float>(g.dbias), s.B, s.Tn,
            s.heads, s.D, s.scale, workspace.data<float>(), cuda.stream);
      }));
  return g;
}

}  // namespace

Tensor attention(const Tensor& qkv, int64_t heads) {
  const AttentionShape s = attention_shape(qkv, heads);
  AttentionOutputs o = attention_forward(qkv, s);
  if (needs_recording({&qkv}))
    record("attention", o.out, {&qkv}, {qkv, o.out, o.lse}, [s](Node& node, const Tensor& dout) {
      return std::vector<Tensor>{
          attention_backward(dout, node.saved[0], node.saved[1], node.saved[2], s, nullptr).dqkv};
    });
  return o.out;
}

Tensor linear_attention(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t heads) {
  Tensor qkv = detail::linear_forward(x, weight, bias);
  const AttentionShape s = attention_shape(qkv, heads);
  AttentionOutputs o = attention_forward(qkv, s);
  if (needs_recording({&x, &weight, &bias}))
    record("linear_attention", o.out, {&x, &weight, &bias}, {x, weight, bias, qkv, o.out, o.lse},
           [s](Node& node, const Tensor& dout) {
             const Tensor &x = node.saved[0], &weight = node.saved[1], &bias = node.saved[2];
             const bool want_dbias = node.needs_input_grad[2];
             AttentionGrads a = attention_backward(dout, node.saved[3], node.saved[4],
                                                   node.saved[5], s, want_dbias ? &bias : nullptr);
             detail::LinearGrads g =
                 detail::linear_backward(a.dqkv, x, weight, bias, node.needs_input_grad[0],
                                         node.needs_input_grad[1], /*want_dbias=*/false);
             return std::vector<Tensor>{g.dx, g.dweight, a.dbias};
           });
  return o.out;
}

}  // namespace deit::ops
