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
#include <cstdint>

#include "engine/rng.h"
#include "kernels/augment.h"

namespace deit::data {

// The parameter structs are the augment kernels' own (kernels/augment.h), so a sample's
// parameters go to the CPU reference and to the GPU stage as they are.
using kernels::CropMode;
using kernels::CropParams;
using kernels::JitterOp;
using kernels::ThreeAugmentOp;
using kernels::AugmentParams;

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

// torchvision Resize(side) with an int: the shorter side becomes `side`, the longer side
// int(side * long / short).
struct ResizedSize {
  int height, width;
};
ResizedSize shorter_side_resize(int height, int width, int side);

// The crop alone, for a source image of height x width (used by `deit augment rrc:/src:`).
// Throws std::invalid_argument when the image is empty or too small for the reflect padding.
CropParams sample_crop_params(const AugmentConfig& config, int height, int width, Rng& rng);

// Python's round(): half to even (std::nearbyint in the default rounding mode), as torchvision
// rounds crop sizes and centre offsets.
int python_round(double v);

// All choices for one sample whose source image is height x width.
AugmentParams sample_augment_params(const AugmentConfig& config, int height, int width, Rng& rng);

// Evaluation's view as a crop (kSimpleRandom without padding): torchvision's Resize of the
// shorter side to int(size / crop_ratio) (bicubic), then CenterCrop(size), whose corner is
// round((H - size) / 2), round((W - size) / 2) with Python's round. No colour op, no flip.
// Throws std::invalid_argument for an empty image or a crop ratio outside (0, 1].
AugmentParams eval_augment_params(int height, int width, int size, double crop_ratio);

}  // namespace deit::data
