#include "train/finetune.h"

#include <cmath>
#include <stdexcept>
#include <vector>

#include "model/checkpoint.h"

namespace deit::train {

namespace {

// The cubic convolution kernel torch's bicubic interpolation uses (a = -0.75).
double cubic_weight(double x) {
  constexpr double a = -0.75;
  x = std::abs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

// The 4 source taps and weights of each output position along one axis of old -> new samples,
// with align_corners=False (pixel centres aligned) and taps clamped to the edge.
struct Taps {
  int64_t index[4];
  double weight[4];
};

std::vector<Taps> bicubic_taps(int64_t old_size, int64_t new_size) {
  std::vector<Taps> taps(new_size);
  const double scale = static_cast<double>(old_size) / new_size;
  for (int64_t o = 0; o < new_size; ++o) {
    const double src = (o + 0.5) * scale - 0.5;
    const double base = std::floor(src);
    const double t = src - base;
    for (int k = 0; k < 4; ++k) {
      const int64_t i = static_cast<int64_t>(base) - 1 + k;
      taps[o].index[k] = std::min(std::max<int64_t>(i, 0), old_size - 1);
      taps[o].weight[k] = cubic_weight(t - (k - 1));
    }
  }
  return taps;
}

}  // namespace

Tensor resize_pos_embed(const Tensor& pos, int64_t old_grid, int64_t new_grid) {
  const int64_t C = pos.size(-1);
  if (pos.shape() != Shape{1, old_grid * old_grid, C})
    throw std::invalid_argument("pos_embed " + pos.describe() + " is not a " +
                                std::to_string(old_grid) + "x" + std::to_string(old_grid) + " grid");
  const std::vector<float> src = pos.to(DType::f32).to_vector<float>();  // (old, old, C)
  const std::vector<Taps> taps = bicubic_taps(old_grid, new_grid);
  std::vector<float> out(static_cast<size_t>(new_grid * new_grid * C));  // (new, new, C)
  for (int64_t y = 0; y < new_grid; ++y)
    for (int64_t x = 0; x < new_grid; ++x)
      for (int64_t c = 0; c < C; ++c) {
        double v = 0;
        for (int ky = 0; ky < 4; ++ky)
          for (int kx = 0; kx < 4; ++kx)
            v += taps[y].weight[ky] * taps[x].weight[kx] *
                 src[(taps[y].index[ky] * old_grid + taps[x].index[kx]) * C + c];
        out[(y * new_grid + x) * C + c] = static_cast<float>(v);
      }
  return Tensor::from_vector(out, {1, new_grid * new_grid, C}).to(pos.dtype());
}

bool fit_pos_embed(NamedTensors& tensors, const model::ViTConfig& config,
                   const std::string& source) {
  for (auto& [name, t] : tensors) {
    if (name != "pos_embed" || t.dim() != 3 || t.size(1) == config.num_patches()) continue;
    const auto old_grid = static_cast<int64_t>(std::llround(std::sqrt(double(t.size(1)))));
    if (old_grid * old_grid != t.size(1))
      throw std::runtime_error(source + ": pos_embed " + t.describe() +
                               " is not a square patch grid");
    t = resize_pos_embed(t, old_grid, config.grid());
    return true;
  }
  return false;
}

void load_finetune_weights(model::VisionTransformer& vit, const std::string& path) {
  NamedTensors tensors = model::read_model_tensors(path);
  fit_pos_embed(tensors, vit.config(), "'" + path + "'");
  const Shape head_shape = vit.parameters().get("head.weight").shape();
  NamedTensors adapted;
  for (auto& [name, t] : tensors) {
    if ((name == "head.weight" || name == "head.bias") && t.size(0) != head_shape[0]) {
      adapted.emplace_back(name, vit.parameters().get(name).clone());  // a new head for new classes
    } else {
      adapted.emplace_back(name, t);
    }
  }
  model::load_parameters(vit, adapted, "--finetune source '" + path + "'");
}

}  // namespace deit::train
