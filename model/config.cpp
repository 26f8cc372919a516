#include "model/config.h"

#include <cmath>
#include <regex>
#include <stdexcept>

#include "kernels/attention.h"
#include "kernels/layernorm.h"

namespace deit::model {

void ViTConfig::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  // The upper bounds lie far beyond any ViT, but keep every size and count the program derives
  // from a configuration (parameters, activation bytes, FLOPs) inside int64.
  auto check_range = [&](const char* field, int64_t value, int64_t lo, int64_t hi) {
    if (value < lo)
      fail(std::string(field) + " must be at least " + std::to_string(lo) + ", got " +
           std::to_string(value));
    if (value > hi)
      fail(std::string(field) + " must be at most " + std::to_string(hi) + ", got " +
           std::to_string(value));
  };
  check_range("patch size", patch, 1, 1024);
  check_range("dim", dim, 1, 65536);
  check_range("depth", depth, 1, 1024);
  check_range("heads", heads, 1, dim);
  if (dim % heads != 0)
    fail("dim " + std::to_string(dim) + " is not divisible by heads " + std::to_string(heads));
  check_range("num-classes", num_classes, 1, int64_t{1} << 24);
  if (input_size < patch)
    fail("input size " + std::to_string(input_size) + " is smaller than one " +
         std::to_string(patch) + "-pixel patch");
  check_range("input size", input_size, patch, 16384);
  check_range("in_channels", in_channels, 1, 64);
  check_range("mlp_ratio", mlp_ratio, 1, 64);
  if (!std::isfinite(layerscale_init))
    fail("layerscale_init must be finite, got " + std::to_string(layerscale_init));
  if (!(layernorm_eps > 0) || !std::isfinite(layernorm_eps))
    fail("layernorm_eps must be positive and finite, got " + std::to_string(layernorm_eps));
  // The blocks' multiply-adds per image, in double: what int64 cost sums would overflow on.
  const double T = static_cast<double>(tokens()), C = static_cast<double>(dim);
  const double block_macs = (4 + 2 * static_cast<double>(mlp_ratio)) * T * C * C + 2 * T * T * C;
  constexpr double kMaxMacsPerImage = 1e15;  // ViT-H/14 at 224: 1.7e11
  if (static_cast<double>(depth) * block_macs > kMaxMacsPerImage)
    fail("a model of dim " + std::to_string(dim) + ", depth " + std::to_string(depth) + " and " +
         std::to_string(tokens()) +
         " tokens needs more than 1e15 multiply-adds per image: "
         "beyond what deit trains");
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

// People arrive with the names of the reference code (models_v2.py: "deit_base_patch16_LS",
// "deit_huge_patch14_52_LS") or of timm ("deit3_base_patch16_384.fb_in22k_ft_in1k"). deit keeps
// one name a shape, and the input size apart (the recipe trains one model at two sizes), so such a
// name is answered with the preset and, where the name carries one, the --input-size it means.
// timm's "deit_base_patch16_224" is DeiT I, without LayerScale: no preset of deit's.
std::string other_name_hint(const std::string& name) {
  static const std::regex kReferenceName(
      R"(deit_(tiny|small|medium|base|large|huge)_patch(\d+)(_52)?_LS)");
  // timm's names, with a pretrained tag (.fb_in22k_ft_in1k) or timm 0.6's suffix (_in21ft1k).
  static const std::regex kTimmName(
      R"(deit3_(tiny|small|medium|base|large|huge)_patch(\d+)_(\d+)(_in21ft1k)?(\.\w+)?)");
  std::smatch m;
  std::string ours, input_size;
  if (std::regex_match(name, m, kReferenceName)) {
    ours = "deit3_" + m[1].str() + (m[3].matched ? "52" : "");
  } else if (std::regex_match(name, m, kTimmName)) {
    ours = "deit3_" + m[1].str();
    input_size = m[3].str();
  } else {
    return "";
  }
  for (const auto& p : kPresets)
    if (ours == p.name && m[2].str() == std::to_string(p.patch))
      return ": deit calls it " + ours +
             (input_size.empty() ? std::string() : " with --input-size " + input_size);
  return "";
}
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
  throw std::invalid_argument("unknown model '" + name + "'" + other_name_hint(name) +
                              " (known: " + known + ")");
}

std::string preset_of(const ViTConfig& c) {
  for (const std::string& name : preset_names())
    if (c.name == name || c.name.rfind(name + " ", 0) == 0) return name;
  return "";
}

}  // namespace deit::model
