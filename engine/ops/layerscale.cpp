#include "engine/ops/layerscale.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "engine/rng.h"
#include "kernels/layerscale.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;
using detail::empty_if;

namespace {

void check_residual_operands(const char* op, const Tensor& x, const Tensor& branch,
                             const Tensor& gamma, const Tensor& keep_scale) {
  check(x.dim() == 3 && branch.shape() == x.shape(), op,
        "x " + x.describe() + " and branch " + branch.describe() + " must be the same (B, T, C)");
  check(gamma.shape() == Shape{x.size(2)} && keep_scale.shape() == Shape{x.size(0)}, op,
        "gamma " + gamma.describe() + " / keep_scale " + keep_scale.describe() + " for x " +
            x.describe());
  check(!keep_scale.requires_grad(), op, "keep_scale is not differentiable");
}

struct LayerscaleGrads {
  Tensor dbranch, dgamma;
};

// LayerScale's and drop-path's part of backward, given the gradient dout of the residual update's
// output: dbranch and dgamma, each only when wanted.
LayerscaleGrads layerscale_backward(const Tensor& dout, const Tensor& branch, const Tensor& gamma,
                                    const Tensor& keep, bool want_dbranch, bool want_dgamma) {
  const int64_t B = branch.size(0), Tn = branch.size(1), C = branch.size(2);
  LayerscaleGrads grads{empty_if(want_dbranch, branch),
                        detail::empty_param_grad_if(want_dgamma, gamma)};
  if (!want_dbranch && !want_dgamma) return grads;
  const char* op = "layerscale_residual backward";
  detail::dispatch(op, {&dout, &branch},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::layerscale_residual_backward_cpu<T>(
            dout.data<T>(), branch.data<T>(), gamma.data<T>(), keep.data<T>(),
            data_or_null<T>(grads.dbranch), data_or_null<T>(grads.dgamma), B, Tn, C);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        Tensor workspace = detail::cuda_workspace(
            cuda, kernels::layerscale_residual_backward_cuda_workspace_floats(B, Tn, C));
        kernels::layerscale_residual_backward_cuda(
            detail::cuda_data<float>(op, "dout", dout),
            branch.data<kernels::bf16_bits>(), detail::cuda_bf16_weights(op, "gamma", gamma),
            keep.data<float>(), data_or_null<kernels::bf16_bits>(grads.dbranch),
            data_or_null<float>(grads.dgamma), B, Tn, C, workspace.data<float>(), cuda.stream);
      }));
  return grads;
}

}  // namespace

Tensor layerscale_residual(const Tensor& x, const Tensor& branch, const Tensor& gamma,
                           const Tensor& keep_scale) {
  check_residual_operands("layerscale_residual", x, branch, gamma, keep_scale);
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2);
  // On CUDA the residual stream is fp32 (kernels/layerscale.h says why), whatever x is: a wrong x
  // then fails its own check below, by name.
  Tensor out = Tensor::empty(x.shape(), detail::fp32_on_cuda(x), x.device());
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
            detail::cuda_data<float>(op, "x", x),
            detail::cuda_data<kernels::bf16_bits>(op, "branch", branch),
            detail::cuda_bf16_weights(op, "gamma", gamma),
            detail::cuda_data<float>(op, "keep_scale", keep_scale), out.data<float>(), B, Tn, C,
            cuda.stream);
      }));
  if (needs_recording({&x, &branch, &gamma}))
    record("layerscale_residual", out, {&x, &branch, &gamma}, {branch, gamma, keep_scale},
           [](Node& node, const Tensor& dout) {
             LayerscaleGrads grads =
                 layerscale_backward(dout, node.saved[0], node.saved[1], node.saved[2],
                                     node.needs_input_grad[1], node.needs_input_grad[2]);
             // d out / d x is the identity: the residual stream's gradient passes through.
             return std::vector<Tensor>{dout, grads.dbranch, grads.dgamma};
           });
  return out;
}

ResidualAndNorm layerscale_residual_layernorm(const Tensor& x, const Tensor& branch,
                                              const Tensor& gamma, const Tensor& keep_scale,
                                              const Tensor& ln_weight, const Tensor& ln_bias,
                                              double eps) {
  const char* name = "layerscale_residual_layernorm";
  check_residual_operands(name, x, branch, gamma, keep_scale);
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2), rows = B * Tn;
  check(ln_weight.shape() == Shape{C} && ln_bias.shape() == Shape{C}, name,
        "LayerNorm weight " + ln_weight.describe() + " / bias " + ln_bias.describe() +
            " for x " + x.describe());
  // The residual is fp32 on CUDA (x's dtype on the CPU), the normed output feeds the bf16 branch.
  ResidualAndNorm result{Tensor::empty(x.shape(), detail::fp32_on_cuda(x), x.device()),
                         Tensor::empty(x.shape(), detail::bf16_on_cuda(x), x.device())};
  Tensor mean = Tensor::empty({rows}, detail::fp32_on_cuda(x), x.device());
  Tensor rstd = Tensor::empty({rows}, detail::fp32_on_cuda(x), x.device());
  detail::dispatch(name, {&x, &branch, &gamma, &keep_scale, &ln_weight, &ln_bias},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::layerscale_residual_layernorm_forward_cpu<T>(
            x.data<T>(), branch.data<T>(), gamma.data<T>(), keep_scale.data<T>(),
            ln_weight.data<T>(), ln_bias.data<T>(), result.residual.data<T>(),
            result.normed.data<T>(), mean.data<T>(), rstd.data<T>(), B, Tn, C, eps);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::layerscale_residual_layernorm_forward_cuda(
            detail::cuda_data<float>(name, "x", x),
            detail::cuda_data<kernels::bf16_bits>(name, "branch", branch),
            detail::cuda_bf16_weights(name, "gamma", gamma),
            detail::cuda_data<float>(name, "keep_scale", keep_scale),
            detail::cuda_bf16_weights(name, "ln_weight", ln_weight),
            detail::cuda_bf16_weights(name, "ln_bias", ln_bias),
            result.residual.data<float>(), result.normed.data<kernels::bf16_bits>(),
            mean.data<float>(), rstd.data<float>(), B, Tn, C, eps, cuda.stream);
      }));
  if (!needs_recording({&x, &branch, &gamma, &ln_weight, &ln_bias})) return result;
  record(name, {&result.residual, &result.normed}, {&x, &branch, &gamma, &ln_weight, &ln_bias},
         {result.residual, branch, gamma, keep_scale, ln_weight, mean, rstd},
         [B, Tn, C](Node& node, const std::vector<Tensor>& grads) {
           const Tensor &dout = grads[0], &dy = grads[1];
           const Tensor &out = node.saved[0], &branch = node.saved[1], &gamma = node.saved[2];
           const Tensor &keep = node.saved[3], &ln_weight = node.saved[4];
           const Tensor &mean = node.saved[5], &rstd = node.saved[6];
           const bool want_dbranch = node.needs_input_grad[1];
           const bool want_dgamma = node.needs_input_grad[2];
           if (!dy.defined()) {
             // Only the residual stream was differentiated: LayerScale's backward alone.
             LayerscaleGrads ls = layerscale_backward(dout, branch, gamma, keep, want_dbranch,
                                                      want_dgamma);
             return std::vector<Tensor>{dout, ls.dbranch, ls.dgamma, Tensor(), Tensor()};
           }
           // dx is always computed: it is the gradient LayerScale's half reads. It has out's
           // dtype (fp32 on CUDA: the residual stream's gradient).
           Tensor dx = Tensor::empty(out.shape(), out.dtype(), out.device());
           Tensor dbranch = empty_if(want_dbranch, branch);
           Tensor dgamma = detail::empty_param_grad_if(want_dgamma, gamma);
           Tensor dln_weight = detail::empty_param_grad_if(node.needs_input_grad[3], ln_weight);
           // ln_bias is not saved: ln_weight has its shape.
           Tensor dln_bias = detail::empty_param_grad_if(node.needs_input_grad[4], ln_weight);
           const char* op = "layerscale_residual_layernorm backward";
           detail::dispatch(op, {&dout, &dy, &out},
               [&](auto zero) {
                 using T = decltype(zero);
                 kernels::layerscale_residual_layernorm_backward_cpu<T>(
                     data_or_null<T>(dout), dy.data<T>(), out.data<T>(), branch.data<T>(),
                     gamma.data<T>(), keep.data<T>(), ln_weight.data<T>(), mean.data<T>(),
                     rstd.data<T>(), dx.data<T>(), data_or_null<T>(dbranch),
                     data_or_null<T>(dgamma), data_or_null<T>(dln_weight),
                     data_or_null<T>(dln_bias), B, Tn, C);
               },
               DEIT_CUDA_PATH([&](CudaContext& cuda) {
                 const int64_t workspace_floats =
                     kernels::layerscale_residual_layernorm_backward_cuda_workspace_floats(B, Tn,
                                                                                           C);
                 Tensor workspace = detail::cuda_workspace(cuda, workspace_floats);
                 kernels::layerscale_residual_layernorm_backward_cuda(
                     detail::cuda_data<float>(op, "dout", dout),
                     detail::cuda_data<kernels::bf16_bits>(op, "dy", dy), out.data<float>(),
                     branch.data<kernels::bf16_bits>(),
                     detail::cuda_bf16_weights(op, "gamma", gamma), keep.data<float>(),
                     detail::cuda_bf16_weights(op, "ln_weight", ln_weight), mean.data<float>(),
                     rstd.data<float>(), dx.data<float>(),
                     data_or_null<kernels::bf16_bits>(dbranch), data_or_null<float>(dgamma),
                     data_or_null<float>(dln_weight), data_or_null<float>(dln_bias), B, Tn, C,
                     workspace.data<float>(), cuda.stream);
               }));
           return std::vector<Tensor>{dx, dbranch, dgamma, dln_weight, dln_bias};
         });
  return result;
}

Tensor drop_path_keep_scales(int64_t B, double rate, Rng& rng, DType dtype) {
  check(rate >= 0.0 && rate < 1.0, "drop_path", "rate must be in [0, 1), got " + std::to_string(rate));
  Tensor scales = Tensor::empty({B}, DType::f64);
  double* s = scales.data<double>();
  for (int64_t b = 0; b < B; ++b) s[b] = rate == 0.0 ? 1.0 : (rng.bernoulli(1.0 - rate) ? 1.0 / (1.0 - rate) : 0.0);
  return scales.to(dtype);
}

}  // namespace deit::ops
