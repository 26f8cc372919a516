#include "engine/ops/layerscale.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "engine/rng.h"
#include "engine/staged_upload.h"
#include "kernels/layerscale.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;
using detail::empty_if;

Tensor layerscale_residual(const Tensor& x, const Tensor& branch, const Tensor& gamma,
                           const Tensor& keep_scale) {
  check(x.dim() == 3 && branch.shape() == x.shape(), "layerscale_residual",
        "x " + x.describe() + " and branch " + branch.describe() + " must be the same (B, T, C)");
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2);
  check(gamma.shape() == Shape{C} && keep_scale.shape() == Shape{B}, "layerscale_residual",
        "gamma " + gamma.describe() + " / keep_scale " + keep_scale.describe() + " for x " +
            x.describe());
  check(!keep_scale.requires_grad(), "layerscale_residual", "keep_scale is not differentiable");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  detail::dispatch("layerscale_residual", {&x, &branch, &gamma, &keep_scale},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::layerscale_residual_forward_cpu<T>(x.data<T>(), branch.data<T>(),
                                                    gamma.data<T>(), keep_scale.data<T>(),
                                                    out.data<T>(), B, Tn, C);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        const char* op = "layerscale_residual";
        kernels::layerscale_residual_forward_cuda(
            detail::cuda_data<kernels::bf16_bits>(op, "x", x),
            detail::cuda_data<kernels::bf16_bits>(op, "branch", branch),
            detail::cuda_bf16_weights(op, "gamma", gamma),
            detail::cuda_data<float>(op, "keep_scale", keep_scale), out.data<kernels::bf16_bits>(),
            B, Tn, C, cuda.stream);
      }));
  if (needs_recording({&x, &branch, &gamma}))
    record("layerscale_residual", out, {&x, &branch, &gamma}, {branch, gamma, keep_scale},
           [B, Tn, C](Node& node, const Tensor& dout) {
             const Tensor &branch = node.saved[0], &gamma = node.saved[1], &keep = node.saved[2];
             Tensor dbranch = empty_if(node.needs_input_grad[1], branch);
             Tensor dgamma = detail::empty_param_grad_if(node.needs_input_grad[2], gamma);
             const char* op = "layerscale_residual backward";
             if (dbranch.defined() || dgamma.defined())
               detail::dispatch(op, {&dout, &branch},
                   [&](auto zero) {
                     using T = decltype(zero);
                     kernels::layerscale_residual_backward_cpu<T>(
                         dout.data<T>(), branch.data<T>(), gamma.data<T>(), keep.data<T>(),
                         data_or_null<T>(dbranch), data_or_null<T>(dgamma), B, Tn, C);
                   },
                   DEIT_CUDA_PATH([&](CudaContext& cuda) {
                     Tensor workspace = detail::cuda_workspace(
                         cuda,
                         kernels::layerscale_residual_backward_cuda_workspace_floats(B, Tn, C));
                     kernels::layerscale_residual_backward_cuda(
                         detail::cuda_data<kernels::bf16_bits>(op, "dout", dout),
                         branch.data<kernels::bf16_bits>(),
                         detail::cuda_bf16_weights(op, "gamma", gamma), keep.data<float>(),
                         data_or_null<kernels::bf16_bits>(dbranch), data_or_null<float>(dgamma),
                         B, Tn, C, workspace.data<float>(), cuda.stream);
                   }));
             // d out / d x is the identity: the residual stream's gradient passes through.
             return std::vector<Tensor>{dout, dbranch, dgamma};
           });
  return out;
}

Tensor drop_path_keep_scales(int64_t B, double rate, Rng& rng, DType dtype, Device device) {
  check(rate >= 0.0 && rate < 1.0, "drop_path", "rate must be in [0, 1), got " + std::to_string(rate));
  Tensor scales = Tensor::empty({B}, DType::f64);
  double* s = scales.data<double>();
  for (int64_t b = 0; b < B; ++b) s[b] = rate == 0.0 ? 1.0 : (rng.bernoulli(1.0 - rate) ? 1.0 / (1.0 - rate) : 0.0);
  // Drawn every forward: the upload must not make the host wait for the device.
  return upload_without_waiting(scales.to(dtype), device);
}

}  // namespace deit::ops
