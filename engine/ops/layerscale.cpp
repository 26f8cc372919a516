#include "engine/ops/layerscale.h"

#include "engine/autograd.h"
#include "engine/ops/linear.h"
#include "engine/ops/op_utils.h"
#include "engine/rng.h"
#include "kernels/layerscale.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;
using detail::empty_if;

namespace {

// branch_samples: the samples branch holds, an empty selection for the whole batch.
void check_residual_operands(const char* op, const Tensor& x, const Tensor& branch,
                             const Tensor& gamma, const Tensor& keep_scale,
                             const SampleSelection& branch_samples = {}) {
  check(x.dim() == 3, op, "x " + x.describe() + " is not (B, T, C)");
  const bool whole = branch_samples.empty();
  check(branch.shape() == Shape{whole ? x.size(0) : branch_samples.count(), x.size(1), x.size(2)},
        op,
        "x " + x.describe() + " and branch " + branch.describe() + " must be (B, T, C) and " +
            (whole ? std::string("(B, T, C)")
                   : "(" + std::to_string(branch_samples.count()) + " selected samples, T, C)"));
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
             // d out / d x is the identity: the residual stream's gradient passes through, as the
             // same tensor. Sharing it is safe: backward never writes a gradient in place
             // (engine/autograd.cpp, accumulate_grad).
             return std::vector<Tensor>{dout, grads.dbranch, grads.dgamma};
           });
  return out;
}

namespace {

const char* const kResidualNorm = "layerscale_residual_layernorm";

// The samples a selection holds: the whole batch's B when it is empty.
int64_t samples_held(const SampleSelection& selection, int64_t B) {
  return selection.empty() ? B : selection.count();
}

// The slot maps of `samples` for the kernels, after checking them against x (B, T, C).
kernels::SampleSlots slots_of(const char* op, const Tensor& x, const BranchSamples& samples) {
  const auto slot = [&](const SampleSelection& s) -> const int32_t* {
    if (s.empty()) return nullptr;
    check(s.batch() == x.size(0) && s.slot.dtype() == DType::i32 && s.slot.device() == x.device(),
          op,
          "a selection of " + std::to_string(s.count()) + " of " + std::to_string(s.batch()) +
              " samples (" + s.slot.describe() + ") for x " + x.describe());
    return s.slot.data<int32_t>();
  };
  return {slot(samples.branch), samples_held(samples.branch, x.size(0)), slot(samples.normed)};
}

// layerscale_residual_layernorm's forward, off the tape: the outputs, and the LayerNorm's
// statistics that backward reads.
struct ResidualNormForward {
  ResidualAndNorm result;
  Tensor mean, rstd;
};

ResidualNormForward residual_norm_forward(const Tensor& x, const Tensor& branch,
                                          const Tensor& gamma, const Tensor& keep_scale,
                                          const Tensor& ln_weight, const Tensor& ln_bias,
                                          double eps, const BranchSamples& samples) {
  const char* name = kResidualNorm;
  check_residual_operands(name, x, branch, gamma, keep_scale, samples.branch);
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2), rows = B * Tn;
  check(ln_weight.shape() == Shape{C} && ln_bias.shape() == Shape{C}, name,
        "LayerNorm weight " + ln_weight.describe() + " / bias " + ln_bias.describe() +
            " for x " + x.describe());
  const kernels::SampleSlots slots = slots_of(name, x, samples);
  // The residual is fp32 on CUDA (x's dtype on the CPU), the normed output feeds the bf16 branch.
  ResidualNormForward f{{Tensor::empty(x.shape(), detail::fp32_on_cuda(x), x.device()),
                         Tensor::empty({samples_held(samples.normed, B), Tn, C},
                                       detail::bf16_on_cuda(x), x.device())},
                        Tensor::empty({rows}, detail::fp32_on_cuda(x), x.device()),
                        Tensor::empty({rows}, detail::fp32_on_cuda(x), x.device())};
  ResidualAndNorm& result = f.result;
  detail::dispatch(
      name, {&x, &branch, &gamma, &keep_scale, &ln_weight, &ln_bias},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::layerscale_residual_layernorm_forward_cpu<T>(
            x.data<T>(), branch.data<T>(), gamma.data<T>(), keep_scale.data<T>(),
            ln_weight.data<T>(), ln_bias.data<T>(), result.residual.data<T>(),
            result.normed.data<T>(), f.mean.data<T>(), f.rstd.data<T>(), B, Tn, C, eps, slots);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::layerscale_residual_layernorm_forward_cuda(
            detail::cuda_data<float>(name, "x", x),
            detail::cuda_data<kernels::bf16_bits>(name, "branch", branch),
            detail::cuda_bf16_weights(name, "gamma", gamma),
            detail::cuda_data<float>(name, "keep_scale", keep_scale),
            detail::cuda_bf16_weights(name, "ln_weight", ln_weight),
            detail::cuda_bf16_weights(name, "ln_bias", ln_bias), result.residual.data<float>(),
            result.normed.data<kernels::bf16_bits>(), f.mean.data<float>(), f.rstd.data<float>(), B,
            Tn, C, eps, cuda.stream, slots);
      }));
  return f;
}

// What backward reads, as the forward above left it.
struct ResidualNormSaved {
  Tensor out, branch, gamma, keep, ln_weight, mean, rstd;
  BranchSamples samples;
};

// Which gradients backward makes. branch_bias: the bias of the linear layer that made branch,
// whose gradient (the column sums of dbranch) is then taken on the way, or nullptr.
struct ResidualNormWants {
  bool dbranch, dgamma, dln_weight, dln_bias;
  const Tensor* branch_bias;
};

struct ResidualNormGrads {
  Tensor dx, dbranch, dgamma, dln_weight, dln_bias, dbranch_bias;
};

// layerscale_residual_layernorm's backward, given the gradients of residual (dout) and normed
// (dy), either of which may be undefined. dbranch_bias stays undefined when only the residual
// stream was differentiated (LayerScale's backward alone, which does not sum it).
ResidualNormGrads residual_norm_backward(const Tensor& dout, const Tensor& dy,
                                         const ResidualNormSaved& s,
                                         const ResidualNormWants& want) {
  const Tensor& out = s.out;
  const int64_t B = out.size(0), Tn = out.size(1), C = out.size(2);
  if (!dy.defined() && s.samples.branch.empty()) {
    // Only the residual stream was differentiated: LayerScale's backward alone.
    LayerscaleGrads ls =
        layerscale_backward(dout, s.branch, s.gamma, s.keep, want.dbranch, want.dgamma);
    return {dout, ls.dbranch, ls.dgamma, Tensor(), Tensor(), Tensor()};
  }
  // LayerScale's backward alone takes the whole batch's branch: with a selection's, the fused
  // kernels run with a dy of zeros instead.
  const Tensor dy_or_zeros = dy.defined()
                                 ? dy
                                 : Tensor::zeros({samples_held(s.samples.normed, B), Tn, C},
                                                 detail::bf16_on_cuda(out), out.device());
  const kernels::SampleSlots slots = slots_of(kResidualNorm, out, s.samples);
  // dx is always computed: it is the gradient LayerScale's half reads. It has out's dtype (fp32 on
  // CUDA: the residual stream's gradient).
  ResidualNormGrads g{
      Tensor::empty(out.shape(), out.dtype(), out.device()), empty_if(want.dbranch, s.branch),
      detail::empty_param_grad_if(want.dgamma, s.gamma),
      detail::empty_param_grad_if(want.dln_weight, s.ln_weight),
      // ln_bias is not saved: ln_weight has its shape.
      detail::empty_param_grad_if(want.dln_bias, s.ln_weight),
      want.branch_bias ? detail::empty_param_grad_if(true, *want.branch_bias) : Tensor()};
  const char* op = "layerscale_residual_layernorm backward";
  detail::dispatch(
      op, {&dout, &dy_or_zeros, &out},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::layerscale_residual_layernorm_backward_cpu<T>(
            data_or_null<T>(dout), dy_or_zeros.data<T>(), out.data<T>(), s.branch.data<T>(),
            s.gamma.data<T>(), s.keep.data<T>(), s.ln_weight.data<T>(), s.mean.data<T>(),
            s.rstd.data<T>(), g.dx.data<T>(), data_or_null<T>(g.dbranch), data_or_null<T>(g.dgamma),
            data_or_null<T>(g.dln_weight), data_or_null<T>(g.dln_bias),
            data_or_null<T>(g.dbranch_bias), B, Tn, C, slots);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        Tensor workspace = detail::cuda_workspace(
            cuda,
            kernels::layerscale_residual_layernorm_backward_cuda_workspace_floats(B, Tn, C, slots));
        kernels::layerscale_residual_layernorm_backward_cuda(
            detail::cuda_data<float>(op, "dout", dout),
            detail::cuda_data<kernels::bf16_bits>(op, "dy", dy_or_zeros), out.data<float>(),
            s.branch.data<kernels::bf16_bits>(), detail::cuda_bf16_weights(op, "gamma", s.gamma),
            s.keep.data<float>(), detail::cuda_bf16_weights(op, "ln_weight", s.ln_weight),
            s.mean.data<float>(), s.rstd.data<float>(), g.dx.data<float>(),
            data_or_null<kernels::bf16_bits>(g.dbranch), data_or_null<float>(g.dgamma),
            data_or_null<float>(g.dln_weight), data_or_null<float>(g.dln_bias),
            data_or_null<float>(g.dbranch_bias), B, Tn, C, workspace.data<float>(), cuda.stream,
            slots);
      }));
  return g;
}

}  // namespace

ResidualAndNorm layerscale_residual_layernorm(const Tensor& x, const Tensor& branch,
                                              const Tensor& gamma, const Tensor& keep_scale,
                                              const Tensor& ln_weight, const Tensor& ln_bias,
                                              double eps, const BranchSamples& samples) {
  ResidualNormForward f =
      residual_norm_forward(x, branch, gamma, keep_scale, ln_weight, ln_bias, eps, samples);
  if (!needs_recording({&x, &branch, &gamma, &ln_weight, &ln_bias})) return f.result;
  record(kResidualNorm, {&f.result.residual, &f.result.normed},
         {&x, &branch, &gamma, &ln_weight, &ln_bias},
         {f.result.residual, branch, gamma, keep_scale, ln_weight, f.mean, f.rstd},
         [samples](Node& node, const std::vector<Tensor>& grads) {
           const std::vector<Tensor>& v = node.saved;
           const ResidualNormGrads g = residual_norm_backward(
               grads[0], grads[1], {v[0], v[1], v[2], v[3], v[4], v[5], v[6], samples},
               {node.needs_input_grad[1], node.needs_input_grad[2], node.needs_input_grad[3],
                node.needs_input_grad[4], nullptr});
           return std::vector<Tensor>{g.dx, g.dbranch, g.dgamma, g.dln_weight, g.dln_bias};
         });
  return f.result;
}

ResidualAndNorm linear_layerscale_residual_layernorm(const Tensor& x, const Tensor& h,
                                                     const Tensor& weight, const Tensor& bias,
                                                     const Tensor& gamma, const Tensor& keep_scale,
                                                     const Tensor& ln_weight, const Tensor& ln_bias,
                                                     double eps, const BranchSamples& samples) {
  const Tensor branch = detail::linear_forward(h, weight, bias);
  ResidualNormForward f =
      residual_norm_forward(x, branch, gamma, keep_scale, ln_weight, ln_bias, eps, samples);
  if (!needs_recording({&x, &h, &weight, &bias, &gamma, &ln_weight, &ln_bias})) return f.result;
  record("linear_layerscale_residual_layernorm", {&f.result.residual, &f.result.normed},
         {&x, &h, &weight, &bias, &gamma, &ln_weight, &ln_bias},
         {f.result.residual, branch, gamma, keep_scale, ln_weight, f.mean, f.rstd, h, weight, bias},
         [samples](Node& node, const std::vector<Tensor>& grads) {
           const std::vector<Tensor>& v = node.saved;
           const Tensor &h = v[7], &weight = v[8], &bias = v[9];
           const std::vector<bool>& want = node.needs_input_grad;
           const bool want_dbranch = want[1] || want[2] || want[3];
           const ResidualNormGrads g = residual_norm_backward(
               grads[0], grads[1], {v[0], v[1], v[2], v[3], v[4], v[5], v[6], samples},
               {want_dbranch, want[4], want[5], want[6], want[3] ? &bias : nullptr});
           // The linear layer's own pass over dbranch sums its bias gradient only where the
           // residual half did not (the residual stream alone differentiated).
           const bool own_dbias = want[3] && !g.dbranch_bias.defined();
           detail::LinearGrads linear = want_dbranch
                                            ? detail::linear_backward(g.dbranch, h, weight, bias,
                                                                      want[1], want[2], own_dbias)
                                            : detail::LinearGrads{};
           return std::vector<Tensor>{
               g.dx,     linear.dx,    linear.dweight, own_dbias ? linear.dbias : g.dbranch_bias,
               g.dgamma, g.dln_weight, g.dln_bias};
         });
  return f.result;
}

Tensor drop_path_keep_scales(int64_t B, double rate, Rng& rng, DType dtype) {
  check(rate >= 0.0 && rate < 1.0, "drop_path",
        "rate must be in [0, 1), got " + std::to_string(rate));
  Tensor scales = Tensor::empty({B}, DType::f64);
  double* s = scales.data<double>();
  for (int64_t b = 0; b < B; ++b)
    s[b] = rate == 0.0 ? 1.0 : (rng.bernoulli(1.0 - rate) ? 1.0 / (1.0 - rate) : 0.0);
  return scales.to(dtype);
}

}  // namespace deit::ops
