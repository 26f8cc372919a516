#pragma once
#include "engine/ops/samples.h"
#include "engine/tensor.h"

namespace deit {
class Rng;
}

namespace deit::ops {

// x + keep_scale[b] * gamma * branch: the residual update of a block with LayerScale and
// stochastic depth. x, branch: (B, T, C), gamma: (C), keep_scale: (B), not differentiated.
Tensor layerscale_residual(const Tensor& x, const Tensor& branch, const Tensor& gamma,
                           const Tensor& keep_scale);

// The residual update and the LayerNorm that follows it in a pre-norm block, as one op:
//   residual = layerscale_residual(x, branch, gamma, keep_scale)
//   normed   = layernorm(residual, ln_weight, ln_bias, eps)
// The same values and gradients as the two ops apart (exactly so on the CPU); on CUDA one kernel
// each way instead of three passes (kernels/layerscale.h). residual, normed: (B, T, C).
struct ResidualAndNorm {
  Tensor residual;
  Tensor normed;
};
// Branches computed for some samples of the batch alone (drop-path's kept ones, model/vit.cpp):
// `branch` is the selection the branch was computed for (branch: (n, T, C), the selected samples'
// rows in order), `normed` the one the next branch will be (normed: its samples' rows alone). The
// same values and gradients as scatter_samples(branch) in and gather_samples(normed) out, without
// those copies. Empty selections: the whole batch.
struct BranchSamples {
  SampleSelection branch, normed;
};
ResidualAndNorm layerscale_residual_layernorm(const Tensor& x, const Tensor& branch,
                                              const Tensor& gamma, const Tensor& keep_scale,
                                              const Tensor& ln_weight, const Tensor& ln_bias,
                                              double eps, const BranchSamples& samples = {});

// layerscale_residual_layernorm(x, linear(h, weight, bias), gamma, ...), the branch's last linear
// layer (the attention's proj, the MLP's fc2) with the residual update and the LayerNorm after it,
// as one node: its backward takes the linear layer's bias gradient from the residual half's pass
// over dbranch (the column sums of dbranch as stored) instead of a pass of its own. The same
// values and gradients as the ops apart, bit for bit on the CPU and on CUDA; it keeps what they
// keep.
ResidualAndNorm linear_layerscale_residual_layernorm(const Tensor& x, const Tensor& h,
                                                     const Tensor& weight, const Tensor& bias,
                                                     const Tensor& gamma, const Tensor& keep_scale,
                                                     const Tensor& ln_weight, const Tensor& ln_bias,
                                                     double eps, const BranchSamples& samples = {});

// Per-sample drop-path scales for a batch of B: each sample is kept with probability 1 - rate
// and then scaled by 1 / (1 - rate), else 0. rate 0 (or eval) gives all ones.
// Returns a (B) tensor of `dtype` in host memory, drawn from `rng`.
Tensor drop_path_keep_scales(int64_t B, double rate, Rng& rng, DType dtype);

}  // namespace deit::ops
