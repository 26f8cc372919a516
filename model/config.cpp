#include "model/config.h"

#include <stdexcept>

#include "kernels/attention.h"
#include "kernels/layernorm.h"

namespace deit::model {

void ViTConfig::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (patch < 1) fail("patch size must be positive, got " + std::to_string(patch));
  if (dim < 1) fail("dim must be positive, got " + std::to_string(dim));
  if (depth < 1) fail("depth must be positive, got " + std::to_string(depth));
  if (heads < 1) fail("heads must be positive, got " + std::to_string(heads));
  if (dim % heads != 0)
    fail("dim " + std::to_string(dim) + " is not divisible by heads " + std::to_string(heads));
  if (num_classes < 1) fail("num-classes must be positive, got " + std::to_string(num_classes));
  if (input_size < patch)
    fail("input size " + std::to_string(input_size) + " is smaller than one " +
         std::to_string(patch) + "-pixel patch");
}

void ViTConfig::validate_for_cuda() const {
  validate();
  if (!kernels::attention_cuda_supports_head_dim(head_dim()))
    throw std::invalid_argument("head dim " + std::to_string(head_dim()) + " (dim " +
                                std::to_string(dim) + " / " + std::to_string(heads) +
                                " heads) has no CUDA attention kernel: the GPU takes head dims "
                                "32, 64, 80 and 128 (the CPU any)");
  if (dim > kernels::kLayerNormCudaMaxWidth)
    throw std::invalid_argument("dim " + std::to_string(dim) +
                                " is wider than the CUDA LayerNorm kernels take (" +
                                std::to_string(kernels::kLayerNormCudaMaxWidth) + "; the CPU any)");
}

namespace {
struct Preset {
  const char* name;
  int64_t patch, dim, depth, heads;
};
// RECIPE.md section 1. Head dim is 64 except ViT-H (80).
constexpr Preset kPresets[] = {
    {"deit3_tiny", 16, 192, 12, 3},    {"deit3_small", 16, 384, 12, 6},
    {"deit3_medium", 16, 512, 12, 8},  {"deit3_base", 16, 768, 12, 12},
    {"deit3_large", 16, 1024, 24, 16}, {"deit3_huge", 14, 1280, 32, 16},
    {"deit3_huge52", 14, 1280, 52, 16},
};
}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& p : kPresets) v.push_back(p.name);
    return v;
  }();
  return names;
}

ViTConfig preset(const std::string& name) {
  for (const auto& p : kPresets) {
    if (name != p.name) continue;
    ViTConfig c;
    c.name = p.name;
    c.patch = p.patch;
    c.dim = p.dim;
    c.depth = p.depth;
    c.heads = p.heads;
    return c;
  }
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown model '" + name + "' (known: " + known + ")");
}

}  // namespace deit::model
