#include "engine/ops/attention.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops/linear.h"
#include "engine/ops/op_utils.h"
#include "kernels/attention.h"

namespace deit::ops {

using detail::check;

namespace {

// Whose queries the attention answers: every token's, or the class token's alone (token 0).
enum class Queries { every_token, class_token };

// The attention's sizes, from qkv (B, T, 3 * heads * head_dim).
struct AttentionShape {
  int64_t B, Tn, heads, C, D;
  double scale;
  Queries queries;
  int64_t query_tokens() const { return queries == Queries::every_token ? Tn : 1; }
  // The kernels' name in errors and in deit bench step's time per op.
  const char* op() const {
    return queries == Queries::every_token ? "attention" : "class_attention";
  }
  const char* backward_op() const {
    return queries == Queries::every_token ? "attention backward" : "class_attention backward";
  }
};

AttentionShape attention_shape(const Tensor& qkv, int64_t heads, Queries queries) {
  check(qkv.dim() == 3 && heads > 0 && qkv.size(2) > 0 && qkv.size(2) % (3 * heads) == 0,
        "attention",
        "qkv " + qkv.describe() + " is not (B, T, 3 * heads * head_dim) for " +
            std::to_string(heads) + " heads and a head_dim of at least 1");
  check(queries == Queries::every_token || qkv.size(1) > 0, "attention",
        "the class token's attention needs a class token, and qkv " + qkv.describe() +
            " has no token");
  const int64_t C = qkv.size(2) / 3, D = C / heads;
  return {qkv.size(0), qkv.size(1), heads, C, D, 1.0 / std::sqrt(static_cast<double>(D)), queries};
}

struct AttentionOutputs {
  Tensor out, lse;
};

AttentionOutputs attention_forward(const Tensor& qkv, const AttentionShape& s) {
  // The kernel's dtype, not qkv's: a wrong qkv then fails its own check below, by name.
  const int64_t Tq = s.query_tokens();
  AttentionOutputs o{Tensor::empty({s.B, Tq, s.C}, detail::bf16_on_cuda(qkv), qkv.device()),
                     Tensor::empty({s.B, s.heads, Tq}, detail::fp32_on_cuda(qkv), qkv.device())};
  const bool every_token = s.queries == Queries::every_token;
  detail::dispatch(
      s.op(), {&qkv},
      [&](auto zero) {
        using T = decltype(zero);
        const auto forward = every_token ? kernels::attention_forward_cpu<T>
                                         : kernels::class_attention_forward_cpu<T>;
        forward(qkv.data<T>(), o.out.data<T>(), o.lse.data<T>(), s.B, s.Tn, s.heads, s.D, s.scale);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        const auto forward =
            every_token ? kernels::attention_forward_cuda : kernels::class_attention_forward_cuda;
        forward(detail::cuda_data<kernels::bf16_bits>(s.op(), "qkv", qkv),
                o.out.data<kernels::bf16_bits>(), o.lse.data<float>(), s.B, s.Tn, s.heads, s.D,
                s.scale, cuda.stream);
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
  const char* op = s.backward_op();
  const bool every_token = s.queries == Queries::every_token;
  detail::dispatch(
      op, {&dout, &qkv},
      [&](auto zero) {
        using T = decltype(zero);
        const auto backward = every_token ? kernels::attention_backward_cpu<T>
                                          : kernels::class_attention_backward_cpu<T>;
        backward(qkv.data<T>(), out.data<T>(), lse.data<T>(), dout.data<T>(), g.dqkv.data<T>(),
                 detail::data_or_null<T>(g.dbias), s.B, s.Tn, s.heads, s.D, s.scale);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        Tensor workspace = detail::cuda_workspace(
            cuda, every_token
                      ? kernels::attention_backward_cuda_workspace_floats(s.B, s.Tn, s.heads, s.D)
                      : kernels::class_attention_backward_cuda_workspace_floats(s.B, s.heads, s.D));
        const auto run = [&](auto backward) {
          backward(qkv.data<kernels::bf16_bits>(), out.data<kernels::bf16_bits>(),
                   lse.data<float>(), detail::cuda_data<kernels::bf16_bits>(op, "dout", dout),
                   g.dqkv.data<kernels::bf16_bits>(), detail::data_or_null<float>(g.dbias), s.B,
                   s.Tn, s.heads, s.D, s.scale, workspace.data<float>(), cuda.stream);
        };
        if (every_token)
          run([](auto... args) { kernels::attention_backward_cuda(args...); });
        else
          run([](auto... args) { kernels::class_attention_backward_cuda(args...); });
      }));
  return g;
}

Tensor attention_op(const Tensor& qkv, int64_t heads, Queries queries) {
  const AttentionShape s = attention_shape(qkv, heads, queries);
  AttentionOutputs o = attention_forward(qkv, s);
  if (needs_recording({&qkv}))
    record(s.op(), o.out, {&qkv}, {qkv, o.out, o.lse}, [s](Node& node, const Tensor& dout) {
      return std::vector<Tensor>{
          attention_backward(dout, node.saved[0], node.saved[1], node.saved[2], s, nullptr).dqkv};
    });
  return o.out;
}

Tensor linear_attention_op(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t heads,
                           Queries queries) {
  Tensor qkv = detail::linear_forward(x, weight, bias);
  const AttentionShape s = attention_shape(qkv, heads, queries);
  AttentionOutputs o = attention_forward(qkv, s);
  const char* name =
      queries == Queries::every_token ? "linear_attention" : "linear_class_attention";
  if (needs_recording({&x, &weight, &bias}))
    record(name, o.out, {&x, &weight, &bias}, {x, weight, bias, qkv, o.out, o.lse},
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

}  // namespace

Tensor attention(const Tensor& qkv, int64_t heads) {
  return attention_op(qkv, heads, Queries::every_token);
}

Tensor class_attention(const Tensor& qkv, int64_t heads) {
  return attention_op(qkv, heads, Queries::class_token);
}

Tensor linear_attention(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t heads) {
  return linear_attention_op(x, weight, bias, heads, Queries::every_token);
}

Tensor linear_class_attention(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              int64_t heads) {
  return linear_attention_op(x, weight, bias, heads, Queries::class_token);
}

}  // namespace deit::ops
