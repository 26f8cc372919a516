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
//   ColorJitter(0.3, 0.3, 0.3): factors ~ U(0.7, 1.3), applied in a random order;
// or, when fine-tuning, timm 0.3.2's rand_augment_transform('rand-m9-mstd0.5-inc1') in place of
// the last two (timm's create_transform applies RandAugment or the colour jitter, never both).
// Random numbers come from deit::Rng (not Python's or torch's generators), so the distributions
// match the reference, not the individual draws.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "engine/rng.h"
#include "kernels/augment.h"

namespace deit::data {

// The parameter structs are the augment kernels' own (kernels/augment.h), so a sample's
// parameters go to the CPU reference and to the GPU stage as they are.
using kernels::AugmentParams;
using kernels::CropMode;
using kernels::CropParams;
using kernels::JitterOp;
using kernels::RandAugmentOp;
using kernels::RandAugmentStep;
using kernels::ThreeAugmentOp;

// timm's RandAugment (rand_augment_transform): num_layers ops drawn with replacement from its 15,
// each applied with probability `prob` at a magnitude ~ N(magnitude, magnitude_std) clipped to
// [0, 10] (magnitude_std infinite: U(0, magnitude), later timm's rule; 0.3.2 ignores mstdinf).
// The defaults are the recipe's fine-tuning spec, rand-m9-mstd0.5-inc1; a spec's missing sections
// take timm's defaults instead (parse_rand_augment).
struct RandAugmentConfig {
  int num_layers = 2;
  double magnitude = 9;
  double magnitude_std = 0.5;
  // timm's _RAND_INCREASING_TRANSFORMS: posterize, solarize and the enhance ops grow stronger with
  // the magnitude (and the enhance factors go both ways from 1) instead of weaker.
  bool increasing = true;
  double prob = 0.5;  // timm's AugmentOp default, which RandAugment keeps
};

// timm's spec: sections joined by '-', the first "rand", then in any order m<magnitude>
// (default 10), n<num_layers> (default 2), mstd<magnitude_std> (default 0; "inf" allowed) and
// inc<0|1> (default 0). Throws std::invalid_argument naming the spec and what is wrong with it:
// an unknown or repeated section (timm's w<weights> is not supported), a value that is not a
// number, n outside [1, kernels::kMaxRandAugmentSteps], m outside [0, 10]. ('-' separates the
// sections, so no value is negative.)
RandAugmentConfig parse_rand_augment(const std::string& spec);
// The --aa option: "none" (no RandAugment) or a spec for parse_rand_augment.
std::optional<RandAugmentConfig> rand_augment_option(const std::string& aa);

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
  // Fine-tuning's augmentation, after the crop and flip; the recipe's pre-training has none.
  std::optional<RandAugmentConfig> rand_augment;
};

// The --aa option applied to `config` as deit train applies it: a spec sets RandAugment and turns
// 3-Augment and the colour jitter off (timm applies one or the other); "none" leaves `config`
// alone. Throws std::invalid_argument for a bad spec (parse_rand_augment).
void use_rand_augment(AugmentConfig& config, const std::string& aa);

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

// All choices for one sample whose source image is height x width (RandAugment's for the
// input_size x input_size view it runs on, after the crop).
AugmentParams sample_augment_params(const AugmentConfig& config, int height, int width, Rng& rng);

// RandAugment's geometric ops as the kAffine steps timm's calls to Pillow amount to
// (Image.transform(size, AFFINE, data, BICUBIC), data mapping an output pixel centre to the
// input): shear (1, f, 0, 0, 1, 0) / (1, 0, 0, f, 1, 0), translation (1, 0, pixels, 0, 1, 0) /
// (1, 0, 0, 0, 1, pixels), and rotate_step, the matrix Pillow 9.4's Image.rotate(degrees,
// BICUBIC) computes for a width x height image, bit for bit (counterclockwise for positive
// degrees, about the image centre).
RandAugmentStep rotate_step(double degrees, int width, int height);
RandAugmentStep shear_x_step(double factor);
RandAugmentStep shear_y_step(double factor);
RandAugmentStep translate_x_step(double pixels);
RandAugmentStep translate_y_step(double pixels);

// Evaluation's view as a crop (kSimpleRandom without padding): torchvision's Resize of the
// shorter side to int(size / crop_ratio) (bicubic), then CenterCrop(size), whose corner is
// round((H - size) / 2), round((W - size) / 2) with Python's round. No colour op, no flip, no
// RandAugment step.
// Throws std::invalid_argument for an empty image or a crop ratio outside (0, 1].
AugmentParams eval_augment_params(int height, int width, int size, double crop_ratio);
// The shorter side evaluation resizes images to: int(size / crop_ratio), as Python's int().
int eval_resize_side(int64_t size, double crop_ratio);
// What is wrong with evaluating at `size` pixels with `crop_ratio` ("" when nothing): the ratio
// must lie in (0, 1], and the shorter side it resizes images to (size / crop_ratio) within
// kMaxImageSide. Worded for the command line's --eval-crop-ratio.
std::string eval_crop_ratio_problem(double crop_ratio, int64_t size);

}  // namespace deit::data
