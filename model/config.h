// The shape of a DeiT III ViT: the presets of RECIPE.md section 1, and custom sizes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace deit::model {

struct ViTConfig {
  std::string name = "custom";
  int64_t patch = 16;
  int64_t dim = 384;
  int64_t depth = 12;
  int64_t heads = 6;
  int64_t num_classes = 1000;
  int64_t input_size = 224;  // square images; the patch grid is input_size / patch, floored
  int64_t in_channels = 3;
  int64_t mlp_ratio = 4;          // fc1 widens dim to mlp_ratio * dim (hidden())
  double layerscale_init = 1e-4;  // every LayerScale gamma's initial value (RECIPE.md: 1e-4)
  double layernorm_eps = 1e-6;    // every LayerNorm's eps (RECIPE.md: 1e-6)

  int64_t grid() const { return input_size / patch; }
  int64_t num_patches() const { return grid() * grid(); }
  int64_t tokens() const { return num_patches() + 1; }  // + the class token
  int64_t head_dim() const { return dim / heads; }
  int64_t hidden() const { return mlp_ratio * dim; }

  // Throws std::invalid_argument naming the first inconsistent field.
  void validate() const;
  // What the CUDA kernels need on top (the head dim of the attention kernels): a model meant for
  // the GPU fails when it is made, not at its first forward. Throws std::invalid_argument.
  void validate_for_cuda() const;
};

// deit3_tiny, deit3_small, deit3_medium, deit3_base, deit3_large, deit3_huge, deit3_huge52.
const std::vector<std::string>& preset_names();
// Throws std::invalid_argument listing the known names for an unknown one.
ViTConfig preset(const std::string& name);
// The preset `c` was made from: its name without the " (custom)" that changed sizes add
// ("deit3_small (custom)" -> "deit3_small"); "" for a model of no preset.
std::string preset_of(const ViTConfig& c);

}  // namespace deit::model
