// The random choices of the DeiT III training augmentation (RECIPE.md section 3), drawn on the
// host into one plain struct per sample. The CPU reference (data/transforms.h) and the GPU stage
// both apply a sample's AugmentParams, so they apply the same transform; everything random lives
// here and nothing random happens while pixels are processed.
//
// The sampling follows the reference code, which runs torchvision 0.14 / timm transforms on PIL
// images (facebookresearch/deit augment.py, new_data_aug_generator):
//   RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic)   or, with --src,
//   Resize(size, bicubic) + RandomCrop(size, padding=4, padding_mode='reflect');
//   RandomHorizontalFlip(0.5);
//   RandomChoice([Grayscale(3), Solarization (threshold 128), GaussianBlur(sigma ~ U(0.1, 2))]);
//   ColorJitter(0.3, 0.3, 0.3): factors ~ U(0.7, 1.3), applied in a random order.
// Random numbers come from deit::Rng (not Python's or torch's generators), so the distributions
// match the reference, not the individual draws.
#pragma once
#include <array>
#include <cstdint>

#include "engine/rng.h"

namespace deit::data {

enum class CropMode : uint8_t {
  kRandomResized,  // RandomResizedCrop (ImageNet-1k recipe)
  kSimpleRandom,   // Simple Random Crop (ImageNet-21k recipe, --src)
};

enum class ThreeAugmentOp : uint8_t { kNone, kGrayscale, kSolarize, kBlur };

enum class JitterOp : uint8_t { kBrightness, kContrast, kSaturation };

// The training augmentation's settings (the recipe's values are the defaults).
struct AugmentConfig {
  int input_size = 224;
  CropMode crop = CropMode::kRandomResized;
  double scale_min = 0.08, scale_max = 1.0;             // RandomResizedCrop area fraction
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;  // RandomResizedCrop aspect ratio w / h
  int src_padding = 4;                                  // Simple Random Crop reflect padding
  bool hflip = true;
  bool three_augment = true;
  double color_jitter = 0.3;  // 0 disables (factors stay 1, which Pillow treats as identity)
};

// Where the output square comes from.
// kRandomResized: the box (x, y, w, h) of the source image is resampled (bicubic) to size x size.
// kSimpleRandom:  the whole source is resampled to (resized_height, resized_width), whose shorter
//                 side is `size`, then padded by `padding` on every side by reflection; the box is
//                 the size x size square cut from that padded image (w = h = size).
struct CropParams {
  CropMode mode = CropMode::kRandomResized;
  int size = 0;
  int x = 0, y = 0, w = 0, h = 0;
  int resized_height = 0, resized_width = 0;  // kSimpleRandom only
  int padding = 0;                            // kSimpleRandom only
};

// Everything random about one training view, in the order it is applied.
struct AugmentParams {
  CropParams crop;
  bool flip = false;
  ThreeAugmentOp three_augment = ThreeAugmentOp::kNone;
  float blur_sigma = 0.0f;  // kBlur only; float, as Pillow receives it
  // Color jitter: one factor per op (1 = unchanged), applied in `jitter_order`. float32, as
  // torchvision draws them and Pillow receives them.
  float brightness = 1.0f, contrast = 1.0f, saturation = 1.0f;
  std::array<JitterOp, 3> jitter_order = {JitterOp::kBrightness, JitterOp::kContrast,
                                          JitterOp::kSaturation};
};

// The crop alone, for a source image of height x width (used by `deit augment rrc:/src:`).
// Throws std::invalid_argument when the image is empty or too small for the reflect padding.
CropParams sample_crop_params(const AugmentConfig& config, int height, int width, Rng& rng);

// All choices for one sample whose source image is height x width.
AugmentParams sample_augment_params(const AugmentConfig& config, int height, int width, Rng& rng);

}  // namespace deit::data
