#include "model/vit.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/staged_upload.h"

namespace deit::model {

VisionTransformer::VisionTransformer(const ViTConfig& config, Device device, DType dtype)
    : config_(config), specs_(vit_param_specs(config)) {
  if (device.is_cuda())
    config_.validate_for_cuda();
  else
    config_.validate();
  for (const ParamSpec& spec : specs_)
    params_.add(spec.name, Tensor::empty(spec.shape, dtype, device), spec.weight_decay);
}

void VisionTransformer::initialize(Rng& rng) {
  NoGrad no_grad;
  // PyTorch's Conv2d default bound, 1 / sqrt(fan_in), for the patch projection
  // (Init::conv_default).
  const double conv_bound =
      1.0 / std::sqrt(static_cast<double>(config_.in_channels * config_.patch * config_.patch));
  for (const ParamSpec& spec : specs_) {
    Tensor value = params_.get(spec.name);
    // Random draws in double on the host, in element order, then cast and moved to the device.
    auto fill_drawn = [&](auto draw) {
      Tensor host = Tensor::empty(spec.shape, DType::f64);
      double* v = host.data<double>();
      for (int64_t i = 0; i < host.numel(); ++i) v[i] = draw();
      value.copy_from(host.to(value.dtype()).to(value.device()));
    };
    switch (spec.init) {
      case Init::zeros: value.fill_(0.0); break;
      case Init::ones: value.fill_(1.0); break;
      case Init::layerscale: value.fill_(config_.layerscale_init); break;
      case Init::trunc_normal:
        fill_drawn([&] { return rng.trunc_normal(0.02, -2.0, 2.0); });
        break;
      case Init::conv_default:
        fill_drawn([&] { return rng.uniform(-conv_bound, conv_bound); });
        break;
    }
  }
}

Tensor VisionTransformer::draw_keep_scales(int64_t B, double drop_path_rate, Rng& rng,
                                           DType dtype) const {
  // The draws are those of one call per branch, in forward order.
  return ops::drop_path_keep_scales(2 * config_.depth * B, drop_path_rate, rng, dtype)
      .view({2 * config_.depth, B});
}

Tensor VisionTransformer::forward(const Tensor& images, double drop_path_rate,
                                  Rng* drop_path_rng) const {
  const Tensor& any_param = p("cls_token");
  const int64_t B = images.dim() > 0 ? images.size(0) : 0;
  if (!drop_path_rng)
    return forward(
        images, Tensor::full({2 * config_.depth, B}, 1.0, any_param.dtype(), any_param.device()));
  return forward_drawn(images,
                       draw_keep_scales(B, drop_path_rate, *drop_path_rng, any_param.dtype()));
}

Tensor VisionTransformer::forward_drawn(const Tensor& images,
                                        const Tensor& drawn_keep_scales) const {
  const Device device = p("cls_token").device();
  const int64_t B = drawn_keep_scales.dim() == 2 ? drawn_keep_scales.size(1) : 0;
  // Every residual branch's keep scales, and the kept samples where a branch will run on them
  // alone, go up together: on CUDA one upload each before the forward's kernels are queued,
  // rather than a host wait in the middle of them at every branch.
  const Tensor keep_scales = upload_without_waiting(drawn_keep_scales, device);
  if (whole_batch_branches_) return forward(images, keep_scales);
  const auto max_selected = static_cast<int64_t>(kSelectedShare * static_cast<double>(B));
  const int64_t granularity = std::max<int64_t>(1, (B + kSelectionSteps - 1) / kSelectionSteps);
  return forward(images, keep_scales,
                 ops::kept_samples(drawn_keep_scales, granularity, max_selected, device));
}

Tensor VisionTransformer::forward(const Tensor& images, const Tensor& keep_scales) const {
  return forward(images, keep_scales, {});
}

Tensor VisionTransformer::forward(const Tensor& images, const Tensor& keep_scales,
                                  const std::vector<ops::SampleSelection>& kept) const {
  const ViTConfig& c = config_;
  if (images.dim() != 4 || images.size(1) != c.in_channels || images.size(2) != c.input_size ||
      images.size(3) != c.input_size)
    throw std::invalid_argument("model " + c.name + " takes images (B, " +
                                std::to_string(c.in_channels) + ", " +
                                std::to_string(c.input_size) + ", " +
                                std::to_string(c.input_size) + "), got " + images.describe());
  const int64_t B = images.size(0), C = c.dim;
  if (keep_scales.shape() != Shape{2 * c.depth, B})
    throw std::invalid_argument("model " + c.name + ": keep scales " + keep_scales.describe() +
                                " for a batch of " + std::to_string(B) + " (want (" +
                                std::to_string(2 * c.depth) + ", " + std::to_string(B) + "))");
  auto keep_scales_row = [&](int64_t row) { return keep_scales.slice(row, row + 1).view({B}); };
  const ops::SampleSelection whole_batch;
  auto kept_row = [&](int64_t row) -> const ops::SampleSelection& {
    return row < static_cast<int64_t>(kept.size()) ? kept[row] : whole_batch;
  };

  Tensor patch_weight = ops::reshape(p("patch_embed.proj.weight"), {C, -1});
  Tensor x = ops::linear(ops::patch_unfold(images, c.patch), patch_weight, p("patch_embed.proj.bias"));
  x = ops::pos_embed_cls(x, p("pos_embed"), p("cls_token"));

  // Pre-norm blocks. Each residual update is fused with the LayerNorm that reads its result
  // (norm2, or the next block's norm1); only the first norm1 and the last update stand alone.
  Tensor h = ops::layernorm(x, p("blocks.0.norm1.weight"), p("blocks.0.norm1.bias"),
                            c.layernorm_eps);
  for (int64_t i = 0; i < c.depth; ++i) {
    const Tensor keep_attention = keep_scales_row(2 * i), keep_mlp = keep_scales_row(2 * i + 1);
    auto block = [this, i, attention_kept = kept_row(2 * i),
                  mlp_kept = kept_row(2 * i + 1)](const std::vector<Tensor>& in) {
      return block_forward(i, in[0], in[1], in[2], in[3], attention_kept, mlp_kept);
    };
    const std::vector<Tensor> inputs{x, h, keep_attention, keep_mlp};
    const std::vector<Tensor> out = grad_checkpointing_
                                        ? recompute_in_backward("checkpointed_block", block, inputs)
                                        : block(inputs);
    x = out[0];
    if (out.size() > 1) h = out[1];
  }
  // The last block left the class token alone, (B, 1, C).
  Tensor cls =
      ops::layernorm(ops::reshape(x, {B, C}), p("norm.weight"), p("norm.bias"), c.layernorm_eps);
  return ops::linear(cls, p("head.weight"), p("head.bias"));
}

std::vector<Tensor> VisionTransformer::block_forward(int64_t i, const Tensor& x,
                                                     const Tensor& normed,
                                                     const Tensor& keep_attention,
                                                     const Tensor& keep_mlp,
                                                     const ops::SampleSelection& attention_kept,
                                                     const ops::SampleSelection& mlp_kept) const {
  const double eps = config_.layernorm_eps;
  const std::string b = "blocks." + std::to_string(i) + ".";
  const bool last = i + 1 == config_.depth;
  // Each linear layer's bias gradient comes from the pass next to it: qkv's from the attention's
  // backward, proj's and fc2's from the residual update's (with the LayerNorm after it), fc1's
  // from GELU's.
  // The last block's output is read at the class token only (the head's input), and each token's
  // output depends on its own query, proj and MLP rows: so past the qkv layer (every token's keys
  // and values) the last block computes the class token alone. The same logits and gradients as
  // the whole block (timm computes the other tokens and drops them), for about a quarter of its
  // work.
  // A branch with a selection runs on the samples drop-path keeps, gathered, and its output is
  // scattered back with zeros for the dropped ones, which the keep scale (0) would have zeroed:
  // the same values and gradients, for the kept share of the work. Then the linear layer before
  // the residual update stands apart (it sees the kept samples, the update all of them).
  const Tensor &qkv_weight = p(b + "attn.qkv.weight"), &qkv_bias = p(b + "attn.qkv.bias");
  const Tensor &proj_weight = p(b + "attn.proj.weight"), &proj_bias = p(b + "attn.proj.bias");
  const Tensor attention_in =
      attention_kept.empty() ? normed : ops::gather_samples(normed, attention_kept);
  const Tensor h =
      last ? ops::linear_class_attention(attention_in, qkv_weight, qkv_bias, config_.heads)
           : ops::linear_attention(attention_in, qkv_weight, qkv_bias, config_.heads);
  const Tensor stream = last ? ops::reshape(ops::cls_select(x), {x.size(0), 1, x.size(2)}) : x;
  const Tensor &gamma1 = p(b + "ls1.gamma"), &norm2_weight = p(b + "norm2.weight"),
               &norm2_bias = p(b + "norm2.bias");
  ops::ResidualAndNorm r =
      attention_kept.empty()
          ? ops::linear_layerscale_residual_layernorm(stream, h, proj_weight, proj_bias, gamma1,
                                                      keep_attention, norm2_weight, norm2_bias, eps)
          : ops::layerscale_residual_layernorm(
                stream,
                ops::scatter_samples(ops::linear(h, proj_weight, proj_bias), attention_kept),
                gamma1, keep_attention, norm2_weight, norm2_bias, eps);

  const Tensor &fc1_weight = p(b + "mlp.fc1.weight"), &fc1_bias = p(b + "mlp.fc1.bias");
  const Tensor &fc2_weight = p(b + "mlp.fc2.weight"), &fc2_bias = p(b + "mlp.fc2.bias");
  const Tensor& gamma = p(b + "ls2.gamma");
  // GELU next to the linear layer whose output it keeps for backward: with fc1 (its bias gradient
  // from GELU's backward pass), or, recomputed, with fc2 (fc2's input not kept).
  const auto mlp_hidden = [&](const Tensor& in) {  // gelu(fc1(in)), kept for fc2's backward
    return ops::linear_gelu(in, fc1_weight, fc1_bias);
  };
  const auto mlp = [&](const Tensor& in) {
    return recompute_gelu_
               ? ops::gelu_linear(ops::linear(in, fc1_weight, fc1_bias), fc2_weight, fc2_bias)
               : ops::linear(mlp_hidden(in), fc2_weight, fc2_bias);
  };
  // The MLP branch's output before the residual update: over the whole batch, or scattered back
  // from the kept samples.
  const auto mlp_branch = [&] {
    return mlp_kept.empty()
               ? mlp(r.normed)
               : ops::scatter_samples(mlp(ops::gather_samples(r.normed, mlp_kept)), mlp_kept);
  };
  if (last)  // no LayerNorm after the last update: the head's comes after it
    return {ops::layerscale_residual(r.residual, mlp_branch(), gamma, keep_mlp)};
  const std::string next = "blocks." + std::to_string(i + 1) + ".";
  const Tensor &norm_weight = p(next + "norm1.weight"), &norm_bias = p(next + "norm1.bias");
  // Over the whole batch without recomputation, fc2 goes with the residual update (its bias
  // gradient from the update's pass).
  r = recompute_gelu_ || !mlp_kept.empty()
          ? ops::layerscale_residual_layernorm(r.residual, mlp_branch(), gamma, keep_mlp,
                                               norm_weight, norm_bias, eps)
          : ops::linear_layerscale_residual_layernorm(r.residual, mlp_hidden(r.normed), fc2_weight,
                                                      fc2_bias, gamma, keep_mlp, norm_weight,
                                                      norm_bias, eps);
  return {r.residual, r.normed};
}

}  // namespace deit::model
