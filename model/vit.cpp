#include "model/vit.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/staged_upload.h"

namespace deit::model {

VisionTransformer::VisionTransformer(const ViTConfig& config, Device device, DType dtype)
    : config_(config), specs_(vit_param_specs(config)) {  // vit_param_specs validates config
  if (device.is_cuda()) config_.validate_for_cuda();
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
    // Random draws in double on the host, in element order, then cast and moved to the device:
    // one seed gives the same weights on the CPU and the GPU, in any dtype.
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
  const SelectionRule rule = selection_rule(B);
  return forward(images, keep_scales,
                 ops::kept_samples(drawn_keep_scales, rule.granularity, rule.max_count, device));
}

VisionTransformer::SelectionRule VisionTransformer::selection_rule(int64_t B) {
  return {std::max<int64_t>(1, (B + kSelectionSteps - 1) / kSelectionSteps),
          static_cast<int64_t>(kSelectedShare * static_cast<double>(B))};
}

std::vector<int64_t> VisionTransformer::branch_samples(const Tensor& drawn_keep_scales) const {
  const int64_t B = drawn_keep_scales.dim() == 2 ? drawn_keep_scales.size(1) : 0;
  std::vector<int64_t> counts(static_cast<size_t>(2 * config_.depth), B);
  if (whole_batch_branches_) return counts;
  const SelectionRule rule = selection_rule(B);
  const std::vector<int64_t> selected =
      ops::kept_sample_counts(drawn_keep_scales, rule.granularity, rule.max_count);
  for (size_t i = 0; i < counts.size() && i < selected.size(); ++i)
    if (selected[i] > 0) counts[i] = selected[i];
  return counts;
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

  // timm's conv weight (C, Cin, P, P), flattened, is in the (cin, ky, kx) order patch_unfold
  // gives each patch's pixels: the conv is this one GEMM, with the weight as timm stores it.
  Tensor patch_weight = ops::reshape(p("patch_embed.proj.weight"), {C, -1});  // (C, Cin P^2)
  // images (B, Cin, H, W) -> patches (B, N, Cin P^2) -> x (B, N, C)
  Tensor x =
      ops::linear(ops::patch_unfold(images, c.patch), patch_weight, p("patch_embed.proj.bias"));
  // x (B, T, C), T = 1 + N: the class token, then the patches plus pos_embed. The residual stream.
  x = ops::pos_embed_cls(x, p("pos_embed"), p("cls_token"));

  // Pre-norm blocks. Each residual update is fused with the LayerNorm that reads its result
  // (norm2, or the next block's norm1); only the first norm1 and the last update stand alone.
  // h, a LayerNorm's output, is always the next branch's input: the rows of the samples it runs on,
  // (B, T, C), or (n, T, C) for a branch that runs on n kept samples.
  Tensor h = ops::layernorm(x, p("blocks.0.norm1.weight"), p("blocks.0.norm1.bias"),
                            c.layernorm_eps);
  if (!kept_row(0).empty()) h = ops::gather_samples(h, kept_row(0));
  for (int64_t i = 0; i < c.depth; ++i) {
    const Tensor keep_attention = keep_scales_row(2 * i), keep_mlp = keep_scales_row(2 * i + 1);
    auto block = [this, i,
                  kept = BlockSamples{kept_row(2 * i), kept_row(2 * i + 1), kept_row(2 * i + 2)}](
                     const std::vector<Tensor>& in) {
      return block_forward(i, in[0], in[1], in[2], in[3], kept);
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
                                                     const BlockSamples& kept) const {
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
  // A branch with a selection runs on the samples drop-path keeps: its input (normed, and the
  // LayerNorm's output for the next branch) holds their rows alone, and the residual update reads
  // its output from them, a dropped sample's adding 0 as its keep scale (0) would have made it.
  // The same values and gradients as the whole batch's branch, for the kept share of the work.
  const Tensor &qkv_weight = p(b + "attn.qkv.weight"), &qkv_bias = p(b + "attn.qkv.bias");
  const Tensor &proj_weight = p(b + "attn.proj.weight"), &proj_bias = p(b + "attn.proj.bias");
  // The heads' concatenated outputs, proj's input: (n, T, C), or (n, 1, C) in the last block.
  const Tensor attn = last
                          ? ops::linear_class_attention(normed, qkv_weight, qkv_bias, config_.heads)
                          : ops::linear_attention(normed, qkv_weight, qkv_bias, config_.heads);
  const Tensor stream = last ? ops::reshape(ops::cls_select(x), {x.size(0), 1, x.size(2)}) : x;
  ops::ResidualAndNorm r = ops::linear_layerscale_residual_layernorm(
      stream, attn, proj_weight, proj_bias, p(b + "ls1.gamma"), keep_attention,
      p(b + "norm2.weight"), p(b + "norm2.bias"), eps, {kept.attention, kept.mlp});

  const Tensor &fc1_weight = p(b + "mlp.fc1.weight"), &fc1_bias = p(b + "mlp.fc1.bias");
  const Tensor &fc2_weight = p(b + "mlp.fc2.weight"), &fc2_bias = p(b + "mlp.fc2.bias");
  const Tensor& ls2_gamma = p(b + "ls2.gamma");
  // GELU next to the linear layer whose output it keeps for backward: with fc1 (its bias gradient
  // from GELU's backward pass), or, recomputed, with fc2 (fc2's input not kept).
  const Tensor hidden = recompute_gelu_ ? ops::linear(r.normed, fc1_weight, fc1_bias)
                                        : ops::linear_gelu(r.normed, fc1_weight, fc1_bias);
  if (last) {  // no LayerNorm after the last update (the head's comes after it), and one row
    const Tensor mlp = recompute_gelu_ ? ops::gelu_linear(hidden, fc2_weight, fc2_bias)
                                       : ops::linear(hidden, fc2_weight, fc2_bias);
    return {ops::layerscale_residual(r.residual,
                                     kept.mlp.empty() ? mlp : ops::scatter_samples(mlp, kept.mlp),
                                     ls2_gamma, keep_mlp)};
  }
  const std::string next = "blocks." + std::to_string(i + 1) + ".";
  const Tensor &norm_weight = p(next + "norm1.weight"), &norm_bias = p(next + "norm1.bias");
  // fc2 goes with the residual update (its bias gradient from the update's pass), unless GELU is
  // recomputed with it.
  r = recompute_gelu_ ? ops::layerscale_residual_layernorm(
                            r.residual, ops::gelu_linear(hidden, fc2_weight, fc2_bias), ls2_gamma,
                            keep_mlp, norm_weight, norm_bias, eps, {kept.mlp, kept.next_attention})
                      : ops::linear_layerscale_residual_layernorm(
                            r.residual, hidden, fc2_weight, fc2_bias, ls2_gamma, keep_mlp,
                            norm_weight, norm_bias, eps, {kept.mlp, kept.next_attention});
  return {r.residual, r.normed};
}

}  // namespace deit::model
