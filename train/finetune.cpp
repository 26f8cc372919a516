#include "train/finetune.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <vector>

#include "data/image_source.h"
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
                                std::to_string(old_grid) + "x" + std::to_string(old_grid) +
                                " grid");
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
    // A grid of no patch (a file's pos_embed of no position) has nothing to resize: its taps
    // would index before the start.
    if (old_grid == 0 || old_grid * old_grid != t.size(1)) {
      // One more than a square: the slot for the class token that DeiT I and timm's vit_* models
      // keep, which a DeiT III ViT has not (it adds no position to the class token).
      const auto grid = static_cast<int64_t>(
          std::llround(std::sqrt(double(std::max<int64_t>(t.size(1) - 1, 0)))));
      const std::string slot =
          grid * grid + 1 == t.size(1)
              ? " (" + std::to_string(grid) + "x" + std::to_string(grid) + " + 1: the weights " +
                    "of a ViT with a class-token slot in its pos_embed, such as DeiT I or " +
                    "timm's vit_* models, which are not DeiT III's)"
              : "";
      throw std::runtime_error(source + ": pos_embed " + t.describe() +
                               " is not a square patch grid" + slot);
    }
    t = resize_pos_embed(t, old_grid, config.grid());
    return true;
  }
  return false;
}

std::vector<std::string> load_finetune_weights(model::VisionTransformer& vit,
                                               const std::string& path,
                                               const std::vector<std::string>& class_names) {
  NamedTensors tensors = model::read_model_tensors(path);
  const Tensor* pos_embed = model::find_tensor(tensors, "pos_embed");
  const int64_t old_tokens = pos_embed && pos_embed->dim() == 3 ? pos_embed->size(1) : 0;
  const bool resized = fit_pos_embed(tensors, vit.config(), "'" + path + "'");
  const Shape head_shape = vit.parameters().get("head.weight").shape();
  NamedTensors adapted;
  int64_t source_classes = -1;  // the source head's outputs where the head is made new
  for (auto& [name, t] : tensors) {
    if ((name == "head.weight" || name == "head.bias") && t.dim() >= 1 &&
        t.size(0) != head_shape[0]) {
      adapted.emplace_back(name, vit.parameters().get(name).clone());  // a new head for new classes
      source_classes = t.size(0);
    } else {
      adapted.emplace_back(name, t);
    }
  }
  const std::string source = "--finetune source '" + path + "'";
  // A source that names its model (a checkpoint, deit's export) is checked against it too: a head
  // count shows in no tensor's shape. Its classes and resolution are the ones adapted above.
  std::optional<model::ViTConfig> source_config = model::read_model_config(path);
  if (source_config) {
    source_config->num_classes = head_shape[0];
    source_config->input_size = vit.config().input_size;
  }
  model::load_parameters(vit, adapted, source, source_config ? &*source_config : nullptr);

  // Said once the weights are known to fit.
  std::vector<std::string> notes;
  const std::string grid = std::to_string(vit.config().grid());
  if (resized) {
    const std::string old_grid =
        std::to_string(std::llround(std::sqrt(static_cast<double>(old_tokens))));
    notes.push_back("--finetune: pos_embed resized (bicubic), grid " + old_grid + "x" + old_grid +
                    " -> " + grid + "x" + grid);
  }
  if (source_classes >= 0) {
    notes.push_back("--finetune: head: new, " + std::to_string(source_classes) + " -> " +
                    std::to_string(head_shape[0]) + " classes (initialised afresh)");
  } else if (!class_names.empty()) {
    const std::vector<std::string> source_names = model::read_class_names(path);
    const std::string differ =
        source_names.empty()
            ? ""
            : data::class_difference(source_names, "the source", class_names, "the dataset");
    if (!differ.empty())
      notes.push_back("warning: --finetune: head: kept (" + std::to_string(head_shape[0]) +
                      " classes), although " + source + " was trained on other classes than " +
                      "the dataset's (" + differ + "): each label starts from the output the " +
                      "source learned for another class");
  }
  return notes;
}

}  // namespace deit::train
