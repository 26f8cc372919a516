#include "model/param_table.h"

namespace deit::model {

std::vector<ParamSpec> vit_param_specs(const ViTConfig& c) {
  c.validate();  // before any size is derived from it: a patch of 0 would divide by zero below
  const int64_t C = c.dim, P = c.patch, hidden = c.hidden();
  std::vector<ParamSpec> specs;
  auto add = [&](std::string name, Shape shape, Init init, bool decay) {
    specs.push_back({std::move(name), std::move(shape), init, decay});
  };
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in) {
    add(prefix + ".weight", {out, in}, Init::trunc_normal, true);
    add(prefix + ".bias", {out}, Init::zeros, false);
  };
  auto layernorm = [&](const std::string& prefix) {
    add(prefix + ".weight", {C}, Init::ones, false);
    add(prefix + ".bias", {C}, Init::zeros, false);
  };

  add("cls_token", {1, 1, C}, Init::trunc_normal, false);
  add("pos_embed", {1, c.num_patches(), C}, Init::trunc_normal, false);  // no class-token slot
  add("patch_embed.proj.weight", {C, c.in_channels, P, P}, Init::conv_default, true);
  add("patch_embed.proj.bias", {C}, Init::conv_default, false);
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string block = "blocks." + std::to_string(i);
    layernorm(block + ".norm1");
    linear(block + ".attn.qkv", 3 * C, C);
    linear(block + ".attn.proj", C, C);
    add(block + ".ls1.gamma", {C}, Init::layerscale, false);
    layernorm(block + ".norm2");
    linear(block + ".mlp.fc1", hidden, C);
    linear(block + ".mlp.fc2", C, hidden);
    add(block + ".ls2.gamma", {C}, Init::layerscale, false);
  }
  layernorm("norm");
  linear("head", c.num_classes, C);
  return specs;
}

}  // namespace deit::model
