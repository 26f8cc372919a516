#include "engine/ops/attention.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/attention.h"

namespace deit::ops {

using detail::check;

Tensor attention(const Tensor& qkv, int64_t heads) {
  check(qkv.dim() == 3 && heads > 0 && qkv.size(2) % (3 * heads) == 0, "attention",
        "qkv " + qkv.describe() + " is not (B, T, 3 * heads * head_dim) for " +
            std::to_string(heads) + " heads");
  const int64_t B = qkv.size(0), Tn = qkv.size(1), C = qkv.size(2) / 3, D = C / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  // The kernel's dtype, not qkv's: a wrong qkv then fails its own check below, by name.
  Tensor out = Tensor::empty({B, Tn, C}, detail::bf16_on_cuda(qkv), qkv.device());
  Tensor lse = Tensor::empty({B, heads, Tn}, detail::fp32_on_cuda(qkv), qkv.device());
  detail::dispatch("attention", {&qkv},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::attention_forward_cpu<T>(qkv.data<T>(), out.data<T>(), lse.data<T>(), B, Tn,
                                          heads, D, scale);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::attention_forward_cuda(
            detail::cuda_data<kernels::bf16_bits>("attention", "qkv", qkv),
            out.data<kernels::bf16_bits>(), lse.data<float>(), B, Tn, heads, D, scale, cuda.stream);
      }));
  if (needs_recording({&qkv}))
    record("attention", out, {&qkv}, {qkv, out, lse},
           [B, Tn, heads, D, scale](Node& node, const Tensor& dout) {
             const Tensor &qkv = node.saved[0], &out = node.saved[1], &lse = node.saved[2];
             Tensor dqkv = Tensor::empty(qkv.shape(), qkv.dtype(), qkv.device());
             const char* op = "attention backward";
             detail::dispatch(op, {&dout, &qkv},
                 [&](auto zero) {
                   using T = decltype(zero);
                   kernels::attention_backward_cpu<T>(qkv.data<T>(), out.data<T>(),
                                                      lse.data<T>(), dout.data<T>(),
                                                      dqkv.data<T>(), B, Tn, heads, D, scale);
                 },
                 DEIT_CUDA_PATH([&](CudaContext& cuda) {
                   Tensor workspace = detail::cuda_workspace(
                       cuda, kernels::attention_backward_cuda_workspace_floats(B, Tn, heads));
                   kernels::attention_backward_cuda(
                       qkv.data<kernels::bf16_bits>(), out.data<kernels::bf16_bits>(),
                       lse.data<float>(), detail::cuda_data<kernels::bf16_bits>(op, "dout", dout),
                       dqkv.data<kernels::bf16_bits>(), B, Tn, heads, D, scale,
                       workspace.data<float>(), cuda.stream);
                 }));
             return std::vector<Tensor>{dqkv};
           });
  return out;
}

}  // namespace deit::ops
