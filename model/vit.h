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
// timm's norm-then-select while saving the other tokens' activations.
#pragma once
#include "engine/parameters.h"
#include "engine/rng.h"
#include "model/config.h"
#include "model/param_table.h"

namespace deit::model {

class VisionTransformer {
 public:
  // Allocates every parameter of `config` (uninitialised) on `device` in `dtype`.
  VisionTransformer(const ViTConfig& config, Device device = Device::cpu(),
                    DType dtype = DType::f32);

  // Truncated normal (std 0.02) weights, zero biases, unit norms, LayerScale gammas at 1e-4.
  void initialize(Rng& rng);

  // images: (B, 3, H, W) normalised, H and W = config.input_size -> logits (B, num_classes).
  // With drop_path_rng, every block drops its branches per sample at drop_path_rate (training);
  // without it, nothing is dropped (evaluation).
  Tensor forward(const Tensor& images, double drop_path_rate = 0.0,
                 Rng* drop_path_rng = nullptr) const;
  // The same with the drop-path keep scales given: (2 * depth, B) on the parameters' device and
  // in their dtype, row 2i for block i's attention branch and 2i + 1 for its MLP branch, each
  // 0 (dropped) or 1 / (1 - rate) (kept). A CUDA graph of the step reads them from a buffer that
  // is refilled before each replay, since a capture cannot upload.
  Tensor forward(const Tensor& images, const Tensor& keep_scales) const;
  // What the first form draws from `rng`, on the host: (2 * depth, B) in `dtype`.
  Tensor draw_keep_scales(int64_t B, double drop_path_rate, Rng& rng, DType dtype) const;

  // Training memory against time: GELU's output (fc2's input) is recomputed in backward rather
  // than kept from forward to backward (ops::gelu_linear): 4 of a block's 18 T x C activations,
  // for one more GELU pass. The values and gradients do not change. Off by default.
  void set_recompute_gelu(bool recompute) { recompute_gelu_ = recompute; }
  // Activation checkpointing per block (engine/autograd.h recompute_in_backward): a block keeps
  // only its two inputs from forward to backward and runs its forward again in backward, one block
  // at a time. About a third more compute for a fraction of the memory (model/cost.h); the values
  // and gradients do not change. Off by default.
  void set_grad_checkpointing(bool checkpoint) { grad_checkpointing_ = checkpoint; }

  const ViTConfig& config() const { return config_; }
  ParameterRegistry& parameters() { return params_; }
  const ParameterRegistry& parameters() const { return params_; }

 private:
  const Tensor& p(const std::string& name) const { return params_.get(name); }
  // Block i's two residual updates: from the residual stream x and norm1(x) to the new stream and
  // the next block's norm1 of it, or to the stream alone after the last block.
  std::vector<Tensor> block_forward(int64_t i, const Tensor& x, const Tensor& normed,
                                    const Tensor& keep_attention, const Tensor& keep_mlp) const;

  ViTConfig config_;
  bool recompute_gelu_ = false;
  bool grad_checkpointing_ = false;
  std::vector<ParamSpec> specs_;
  ParameterRegistry params_;
};

}  // namespace deit::model
