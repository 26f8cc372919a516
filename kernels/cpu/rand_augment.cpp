// The CPU twin of RandAugment's ops (kernels/augment.h, RandAugmentOp): plain loops over the
// per-value arithmetic of kernels/rand_augment_arith.h, which says what Pillow computes for each.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/augment.h"
#include "kernels/cpu/augment_checks.h"
#include "kernels/rand_augment_arith.h"

namespace deit::kernels {
namespace {

using namespace augment_arith;
using namespace augment_checks;
using std::to_string;

void check_level(const char* what, int level, int lo, int hi) {
  if (level < lo || level > hi)
    invalid(std::string(what) + " must be in [" + to_string(lo) + ", " + to_string(hi) + "], got " +
            to_string(level));
}

// histograms: (3, 256), the count of each value in each channel of src (h, w, 3).
void channel_histograms(const uint8_t* src, int h, int w, uint32_t histograms[3][256]) {
  std::memset(histograms, 0, 3 * 256 * sizeof(uint32_t));
  for (size_t i = 0; i < values(h, w); ++i) ++histograms[i % 3][src[i]];
}

// Pillow's AFFINE data (a, b, c, d, e, f), RandAugmentStep::affine.
void check_affine(const double affine[6]) {
  for (int i = 0; i < 6; ++i)
    if (!std::isfinite(affine[i]))
      invalid("affine matrix must be finite, got " + number_text(affine[i]));
}

// The point ops that look at the whole image first (autocontrast, equalize): each channel's
// histogram makes that channel's table, make_table(histogram (256), table (256)), and
// dst: (h, w, 3) = tables[c][src value] for channel c.
template <typename MakeTable>
void apply_histogram_tables(const uint8_t* src, int h, int w, MakeTable make_table, uint8_t* dst) {
  uint32_t histograms[3][256];
  channel_histograms(src, h, w, histograms);
  uint8_t tables[3][256];
  for (int c = 0; c < 3; ++c) make_table(histograms[c], tables[c]);
  for (size_t i = 0; i < values(h, w); ++i) dst[i] = tables[i % 3][src[i]];
}

}  // namespace

void check_rand_augment_step(const RandAugmentStep& s) {
  switch (s.op) {
    case RandAugmentOp::kNone:
    case RandAugmentOp::kAutoContrast:
    case RandAugmentOp::kEqualize:
    case RandAugmentOp::kInvert:
      return;
    case RandAugmentOp::kPosterize:
      return check_level("posterize bits", s.level, 0, 8);
    case RandAugmentOp::kSolarize:
      return check_level("solarize threshold", s.level, 0, 256);
    case RandAugmentOp::kSolarizeAdd:
      return check_level("solarize-add amount", s.level, 0, 255);
    case RandAugmentOp::kColor:
    case RandAugmentOp::kContrast:
    case RandAugmentOp::kBrightness:
    case RandAugmentOp::kSharpness:
      return check_factor("enhance", s.factor);
    case RandAugmentOp::kAffine:
      return check_affine(s.affine);
  }
  invalid("unknown RandAugment op " + to_string(static_cast<int>(s.op)));
}

void autocontrast_cpu(const uint8_t* src, int h, int w, uint8_t* dst) {
  apply_histogram_tables(src, h, w, autocontrast_table, dst);
}

void equalize_cpu(const uint8_t* src, int h, int w, uint8_t* dst) {
  apply_histogram_tables(src, h, w, equalize_table, dst);
}

void invert_cpu(const uint8_t* src, int h, int w, uint8_t* dst) {
  for (size_t i = 0; i < values(h, w); ++i) dst[i] = invert(src[i]);
}

void posterize_cpu(const uint8_t* src, int h, int w, int bits, uint8_t* dst) {
  check_level("posterize bits", bits, 0, 8);
  for (size_t i = 0; i < values(h, w); ++i) dst[i] = posterize(src[i], bits);
}

void solarize_add_cpu(const uint8_t* src, int h, int w, int amount, uint8_t* dst) {
  check_level("solarize-add amount", amount, 0, 255);
  for (size_t i = 0; i < values(h, w); ++i) dst[i] = solarize_add(src[i], amount);
}

// ImageEnhance.Sharpness: Image.blend(image.filter(ImageFilter.SMOOTH), image, factor).
void adjust_sharpness_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst) {
  check_factor("sharpness", factor);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        const size_t i = (static_cast<size_t>(y) * w + x) * 3 + c;
        dst[i] = blend(smooth_at(src, h, w, y, x, c), src[i], factor);
      }
}

// Image.transform(size, AFFINE, affine, BICUBIC, fillcolor=timm's img_mean): timm's Rotate,
// ShearX/Y and TranslateX/YRel (affine_bicubic_pixel has the arithmetic).
void affine_bicubic_cpu(const uint8_t* src, int h, int w, const double affine[6], uint8_t* dst) {
  check_affine(affine);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      affine_bicubic_pixel(src, h, w, affine, x, y, dst + (static_cast<size_t>(y) * w + x) * 3);
}

void rand_augment_step_cpu(const uint8_t* src, int h, int w, const RandAugmentStep& step,
                           uint8_t* dst) {
  check_rand_augment_step(step);
  switch (step.op) {
    case RandAugmentOp::kNone:
      std::memcpy(dst, src, values(h, w));
      return;
    case RandAugmentOp::kAutoContrast:
      return autocontrast_cpu(src, h, w, dst);
    case RandAugmentOp::kEqualize:
      return equalize_cpu(src, h, w, dst);
    case RandAugmentOp::kInvert:
      return invert_cpu(src, h, w, dst);
    case RandAugmentOp::kPosterize:
      return posterize_cpu(src, h, w, step.level, dst);
    case RandAugmentOp::kSolarize:
      return solarize_cpu(src, h, w, dst, step.level);
    case RandAugmentOp::kSolarizeAdd:
      return solarize_add_cpu(src, h, w, step.level, dst);
    case RandAugmentOp::kColor:
      return adjust_saturation_cpu(src, h, w, step.factor, dst);
    case RandAugmentOp::kContrast:
      return adjust_contrast_cpu(src, h, w, step.factor, dst);
    case RandAugmentOp::kBrightness:
      return adjust_brightness_cpu(src, h, w, step.factor, dst);
    case RandAugmentOp::kSharpness:
      return adjust_sharpness_cpu(src, h, w, step.factor, dst);
    case RandAugmentOp::kAffine:
      return affine_bicubic_cpu(src, h, w, step.affine, dst);
  }
}

}  // namespace deit::kernels
