#include "data/augment_params.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace deit::data {

int python_round(double v) { return static_cast<int>(std::nearbyint(v)); }

namespace {

// torchvision 0.14 RandomResizedCrop.get_params (timm's RandomResizedCropAndInterpolation is
// the same): up to 10 tries of (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)),
// keeping the first box that fits; otherwise the centred box of the whole image clamped to the
// allowed aspect ratio range.
CropParams sample_random_resized_crop(const AugmentConfig& config, int height, int width,
                                      Rng& rng) {
  CropParams p;
  p.mode = CropMode::kRandomResized;
  p.size = config.input_size;
  const double area = static_cast<double>(height) * width;
  const double log_ratio_min = std::log(config.ratio_min);
  const double log_ratio_max = std::log(config.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * rng.uniform(config.scale_min, config.scale_max);
    const double aspect = std::exp(rng.uniform(log_ratio_min, log_ratio_max));
    const int w = python_round(std::sqrt(target_area * aspect));
    const int h = python_round(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      p.y = static_cast<int>(rng.below(height - h + 1));
      p.x = static_cast<int>(rng.below(width - w + 1));
      p.w = w;
      p.h = h;
      return p;
    }
  }
  const double in_ratio = static_cast<double>(width) / height;
  p.w = width;
  p.h = height;
  if (in_ratio < config.ratio_min) {
    p.h = python_round(p.w / config.ratio_min);
  } else if (in_ratio > config.ratio_max) {
    p.w = python_round(p.h * config.ratio_max);
  }
  p.y = (height - p.h) / 2;
  p.x = (width - p.w) / 2;
  return p;
}

// torchvision 0.14 Resize(size) (shorter side -> size, longer side -> int(size * long / short))
// followed by RandomCrop(size, padding, padding_mode='reflect').get_params on the padded image.
CropParams sample_simple_random_crop(const AugmentConfig& config, int height, int width, Rng& rng) {
  CropParams p;
  p.mode = CropMode::kSimpleRandom;
  p.size = config.input_size;
  p.padding = config.src_padding;
  const ResizedSize resized = shorter_side_resize(height, width, p.size);
  p.resized_height = resized.height;
  p.resized_width = resized.width;
  if (p.padding >= p.size)
    throw std::invalid_argument("simple random crop: reflect padding " + std::to_string(p.padding) +
                                " needs a crop size above it, got " + std::to_string(p.size));
  p.w = p.h = p.size;
  p.y = static_cast<int>(rng.below(p.resized_height + 2 * p.padding - p.size + 1));
  p.x = static_cast<int>(rng.below(p.resized_width + 2 * p.padding - p.size + 1));
  return p;
}

}  // namespace

ResizedSize shorter_side_resize(int height, int width, int side) {
  const int short_side = std::min(height, width);
  const int long_side = std::max(height, width);
  const int resized_long = static_cast<int>(static_cast<double>(side) * long_side / short_side);
  return height <= width ? ResizedSize{side, resized_long} : ResizedSize{resized_long, side};
}

CropParams sample_crop_params(const AugmentConfig& config, int height, int width, Rng& rng) {
  if (height <= 0 || width <= 0)
    throw std::invalid_argument("cannot crop an empty image (" + std::to_string(height) + "x" +
                                std::to_string(width) + ")");
  if (config.input_size <= 0)
    throw std::invalid_argument("crop size must be positive, got " +
                                std::to_string(config.input_size));
  return config.crop == CropMode::kRandomResized
             ? sample_random_resized_crop(config, height, width, rng)
             : sample_simple_random_crop(config, height, width, rng);
}

AugmentParams sample_augment_params(const AugmentConfig& config, int height, int width, Rng& rng) {
  AugmentParams p;
  p.crop = sample_crop_params(config, height, width, rng);
  p.flip = config.hflip && rng.bernoulli(0.5);
  if (config.three_augment) {
    // RandomChoice over [grayscale, solarize, blur]: one of the three, uniformly.
    static constexpr ThreeAugmentOp kOps[3] = {ThreeAugmentOp::kGrayscale,
                                               ThreeAugmentOp::kSolarize, ThreeAugmentOp::kBlur};
    p.three_augment = kOps[rng.below(3)];
    if (p.three_augment == ThreeAugmentOp::kBlur)
      p.blur_sigma = static_cast<float>(rng.uniform(0.1, 2.0));
  }
  if (config.color_jitter > 0) {
    // ColorJitter.get_params: a random permutation of the ops (hue, at 0, is skipped), then one
    // factor per op, uniform in [max(0, 1 - j), 1 + j].
    for (int i = 2; i > 0; --i) std::swap(p.jitter_order[i], p.jitter_order[rng.below(i + 1)]);
    const double lo = std::max(0.0, 1.0 - config.color_jitter);
    const double hi = 1.0 + config.color_jitter;
    p.brightness = static_cast<float>(rng.uniform(lo, hi));
    p.contrast = static_cast<float>(rng.uniform(lo, hi));
    p.saturation = static_cast<float>(rng.uniform(lo, hi));
  }
  return p;
}

AugmentParams eval_augment_params(int height, int width, int size, double crop_ratio) {
  if (height <= 0 || width <= 0)
    throw std::invalid_argument("cannot crop an empty image (" + std::to_string(height) + "x" +
                                std::to_string(width) + ")");
  if (!(crop_ratio > 0.0 && crop_ratio <= 1.0))
    throw std::invalid_argument("eval crop ratio must be in (0, 1], got " +
                                std::to_string(crop_ratio));
  const ResizedSize resized =
      shorter_side_resize(height, width, static_cast<int>(size / crop_ratio));
  AugmentParams p;
  p.crop.mode = CropMode::kSimpleRandom;
  p.crop.size = p.crop.w = p.crop.h = size;
  p.crop.resized_height = resized.height;
  p.crop.resized_width = resized.width;
  p.crop.x = python_round((resized.width - size) / 2.0);
  p.crop.y = python_round((resized.height - size) / 2.0);
  return p;
}

}  // namespace deit::data
