// The DeiT III Vision Transformer (RECIPE.md section 1), written with engine ops:
//
//   patches = unfold(images)                     (B, N, 3 P^2)    the P x P, stride P conv ...
//   x = patches W_patch^T + b_patch              (B, N, C)        ... as unfold + linear
//   x = [cls ; x + pos_embed]                    (B, 1 + N, C)    no pos_embed slot for cls
//   depth x:  x = x + drop_path(gamma_1 * proj(attention(qkv(norm1(x)))))
//             x = x + drop_path(gamma_2 * fc2(gelu(fc1(norm2(x)))))
//   logits = head(norm(x[:, 0]))                 (B, num_classes)
//
// The final norm is applied to the class token alone: LayerNorm works per token, so this equals
// timm's norm-then-select while saving the other tokens' activations. Two more shortcuts give the
// same logits and gradients as timm's model while skipping work whose result it multiplies by 0
// or drops: the last block computes the class token's path alone past its qkv layer, and in
// training a residual branch that drop-path drops for many samples runs on the kept ones alone
// (block_forward).
#pragma once
#include <vector>

#include "engine/ops/samples.h"
#include "engine/parameters.h"
#include "engine/rng.h"
#include "model/config.h"
#include "model/param_table.h"

namespace deit::model {

class VisionTransformer {
 public:
  // Allocates every parameter of `config` (uninitialised) on `device` in `dtype`. Throws
  // std::invalid_argument, before anything is allocated, for a config that ViTConfig::validate
  // (on CUDA validate_for_cuda) refuses.
  VisionTransformer(const ViTConfig& config, Device device = Device::cpu(),
                    DType dtype = DType::f32);

  // As model/param_table.h's Init says: truncated normal (std 0.02) linear weights, pos_embed and
  // cls_token, PyTorch's Conv2d default for the patch projection, zero biases, unit norms,
  // LayerScale gammas at layerscale_init (1e-4).
  void initialize(Rng& rng);

  // images: (B, 3, H, W) normalised, H and W = config.input_size -> logits (B, num_classes).
  // With drop_path_rng, every block drops its branches per sample at drop_path_rate (training);
  // without it, nothing is dropped (evaluation). A branch that keeps at most kSelectedShare of the
  // batch is computed for the kept samples alone.
  Tensor forward(const Tensor& images, double drop_path_rate = 0.0,
                 Rng* drop_path_rng = nullptr) const;
  // The same with the drop-path keep scales given: (2 * depth, B) on the parameters' device and
  // in their dtype, row 2i for block i's attention branch and 2i + 1 for its MLP branch, each
  // 0 (dropped) or 1 / (1 - rate) (kept). A CUDA graph of the step reads them from a buffer that
  // is refilled before each replay, since a capture cannot upload.
  Tensor forward(const Tensor& images, const Tensor& keep_scales) const;
  // What the first form draws from `rng`, on the host: (2 * depth, B) in `dtype`.
  Tensor draw_keep_scales(int64_t B, double drop_path_rate, Rng& rng, DType dtype) const;
  // The first form with its keep scales drawn already (draw_keep_scales, on the host): uploaded
  // here, and each branch that keeps at most kSelectedShare of the batch computed for the kept
  // samples alone (unless set_whole_batch_branches).
  Tensor forward_drawn(const Tensor& images, const Tensor& drawn_keep_scales) const;
  // The samples each residual branch of forward_drawn(images, drawn_keep_scales) runs on, in the
  // keep scales' row order: the batch size for a branch over the whole batch.
  std::vector<int64_t> branch_samples(const Tensor& drawn_keep_scales) const;

  // Training memory against time: GELU's output (fc2's input) is recomputed in backward rather
  // than kept from forward to backward (ops::gelu_linear): 4 of a block's 18 T x C activations,
  // for one more GELU pass. The values and gradients do not change. Off by default.
  void set_recompute_gelu(bool recompute) { recompute_gelu_ = recompute; }
  // Activation checkpointing per block (engine/autograd.h recompute_in_backward): a block keeps
  // only its two inputs from forward to backward and runs its forward again in backward, one block
  // at a time. About a third more compute for a fraction of the memory (model/cost.h); the values
  // and gradients do not change. Off by default.
  void set_grad_checkpointing(bool checkpoint) { grad_checkpointing_ = checkpoint; }
  // Every drop-path branch over the whole batch, its dropped samples multiplied by 0, as timm
  // computes them; off by default, when a branch that keeps at most kSelectedShare of the batch
  // runs on the kept samples alone. The same values and gradients up to rounding: for comparing
  // the two, and for a run whose shapes must not change from step to step (a CUDA graph's).
  void set_whole_batch_branches(bool whole) { whole_batch_branches_ = whole; }

  const ViTConfig& config() const { return config_; }
  ParameterRegistry& parameters() { return params_; }
  const ParameterRegistry& parameters() const { return params_; }

 private:
  const Tensor& p(const std::string& name) const { return params_.get(name); }
  // A drop-path branch runs on its kept samples alone when they are at most this share of the
  // batch: the saved computation then outweighs what the selection costs (cuBLASLt plans and
  // cached blocks for another shape, a gather before the first block, a scatter after the last).
  static constexpr double kSelectedShare = 0.9;
  // A selection is rounded up to a multiple of 1/kSelectionSteps of the batch with dropped samples
  // (ops::kept_samples), so that a branch takes few shapes from step to step: about 3% of the
  // batch more on average (half a step), for cuBLASLt plans and cached device blocks that serve
  // every step after the first few.
  static constexpr int64_t kSelectionSteps = 16;
  // ops::kept_samples' granularity and max_count for a batch of B, from the two above.
  struct SelectionRule {
    int64_t granularity, max_count;
  };
  static SelectionRule selection_rule(int64_t B);

  // forward(images, keep_scales), with the samples each branch keeps (a selection per row of
  // keep_scales; an empty one, or none at all, for a branch computed over the whole batch).
  Tensor forward(const Tensor& images, const Tensor& keep_scales,
                 const std::vector<ops::SampleSelection>& kept) const;
  // The samples block i's branches run on, and the next block's attention branch (empty
  // selections: the whole batch).
  struct BlockSamples {
    ops::SampleSelection attention, mlp, next_attention;
  };
  // Block i's two residual updates: from the residual stream x and norm1(x) to the new stream and
  // the next block's norm1 of it, or to the stream alone after the last block. Each branch runs
  // on the samples its selection keeps (all, if it is empty): normed holds the rows of those of
  // the attention branch, and the norm1 returned those of the next block's.
  std::vector<Tensor> block_forward(int64_t i, const Tensor& x, const Tensor& normed,
                                    const Tensor& keep_attention, const Tensor& keep_mlp,
                                    const BlockSamples& kept) const;

  ViTConfig config_;
  bool recompute_gelu_ = false;
  bool grad_checkpointing_ = false;
  bool whole_batch_branches_ = false;
  std::vector<ParamSpec> specs_;
  ParameterRegistry params_;
};

}  // namespace deit::model
