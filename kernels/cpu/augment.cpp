// The CPU twin of the augment family (kernels/augment.h): plain loops over the per-value
// arithmetic of kernels/augment_arith.h, one image op at a time, each reading the previous op's
// uint8 output as Pillow does.
#include "kernels/augment.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/augment_arith.h"
#include "kernels/cpu/augment_checks.h"

namespace deit::kernels {
namespace {

using namespace augment_arith;
using namespace augment_checks;
using std::to_string;

using Pixels = std::vector<uint8_t>;

std::string box(int x, int y, int w, int h) {
  return "x=" + to_string(x) + " y=" + to_string(y) + " w=" + to_string(w) + " h=" + to_string(h);
}

// An image's size as deit prints it everywhere (image files, written results): width x height.
std::string dims(int h, int w) { return to_string(w) + "x" + to_string(h); }

// The argument checks of the ops that do not size their output (check_crop_box & co are public).

// The bound keeps the box radius an int and the O(width * radius) passes short.
void check_sigma(float sigma) {
  if (!(sigma >= 0.0f && sigma <= 1000.0f))
    invalid("blur sigma must be in [0, 1000], got " + number_text(sigma));
}

// The taps of every output pixel along one axis: windows[o] and its weights from
// weights[o * stride].
struct AxisTaps {
  std::vector<ResampleWindow> windows;
  std::vector<int32_t> weights;
  int stride = 0;
};

AxisTaps axis_taps(int in_size, int out_size) {
  AxisTaps t;
  t.stride = resample_max_taps(in_size, out_size);
  t.windows.resize(out_size);
  t.weights.resize(static_cast<size_t>(out_size) * t.stride);
  for (int o = 0; o < out_size; ++o) {
    t.windows[o] = resample_window(in_size, out_size, o);
    resample_weights(t.windows[o], &t.weights[static_cast<size_t>(o) * t.stride]);
  }
  return t;
}

// (h, w, 3) -> (h, out_w, 3)
void resample_horizontal(const uint8_t* src, int h, int w, uint8_t* dst, int out_w) {
  const AxisTaps t = axis_taps(w, out_w);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < out_w; ++x)
      for (int c = 0; c < 3; ++c)
        dst[(static_cast<size_t>(y) * out_w + x) * 3 + c] =
            resample_at(src + (static_cast<size_t>(y) * w + t.windows[x].first) * 3 + c, 3,
                        &t.weights[static_cast<size_t>(x) * t.stride], t.windows[x].count);
}

// (h, w, 3) -> (out_h, w, 3)
void resample_vertical(const uint8_t* src, int h, int w, uint8_t* dst, int out_h) {
  const AxisTaps t = axis_taps(h, out_h);
  const ptrdiff_t row = static_cast<ptrdiff_t>(w) * 3;
  for (int y = 0; y < out_h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        dst[(static_cast<size_t>(y) * w + x) * 3 + c] =
            resample_at(src + t.windows[y].first * row + x * 3 + c, row,
                        &t.weights[static_cast<size_t>(y) * t.stride], t.windows[y].count);
}

}  // namespace

std::string number_text(double v) {
  std::ostringstream text;
  text << std::setprecision(15) << v;
  return text.str();
}

void check_crop_box(int x, int y, int w, int h, int height, int width) {
  // The box's far edges in int64: x + w in int overflows for a box far outside the image, and a
  // wrapped sum would pass the test and read outside the source.
  if (x < 0 || y < 0 || w <= 0 || h <= 0 || int64_t{x} + w > width || int64_t{y} + h > height)
    invalid("crop box " + box(x, y, w, h) + " is not inside the " + dims(height, width) + " image");
}

void check_reflect_padding(int padding, int height, int width) {
  if (padding < 0 || padding >= std::min(height, width))
    invalid("reflect padding must be in [0, min(H, W)) for the " + dims(height, width) +
            " image, got " + to_string(padding));
}

void check_resize(int h, int w, int out_h, int out_w) {
  if (h <= 0 || w <= 0 || out_h <= 0 || out_w <= 0)
    invalid("cannot resize " + dims(h, w) + " to " + dims(out_h, out_w));
}

void check_augment_params(const AugmentParams& p, int height, int width, int size) {
  const CropParams& c = p.crop;
  if (height <= 0 || width <= 0) invalid("empty source image (" + dims(height, width) + ")");
  if (size <= 0 || c.size != size)
    invalid("the view is " + to_string(c.size) + " pixels, the batch's " + to_string(size));
  if (c.mode == CropMode::kRandomResized) {
    check_crop_box(c.x, c.y, c.w, c.h, height, width);
  } else if (c.mode == CropMode::kSimpleRandom) {
    check_resize(height, width, c.resized_height, c.resized_width);
    check_reflect_padding(c.padding, c.resized_height, c.resized_width);
    if (c.w != size || c.h != size)
      invalid("crop box " + box(c.x, c.y, c.w, c.h) + " is not the " + to_string(size) +
              "-pixel view");
    check_crop_box(c.x, c.y, size, size, c.resized_height + 2 * c.padding,
                   c.resized_width + 2 * c.padding);
  } else {
    invalid("unknown crop mode " + to_string(static_cast<int>(c.mode)));
  }
  if (static_cast<int>(p.three_augment) > static_cast<int>(ThreeAugmentOp::kBlur))
    invalid("unknown 3-Augment op " + to_string(static_cast<int>(p.three_augment)));
  check_sigma(p.blur_sigma);
  check_factor("brightness", p.brightness);
  check_factor("contrast", p.contrast);
  check_factor("saturation", p.saturation);
  for (JitterOp op : p.jitter_order)
    if (static_cast<int>(op) > static_cast<int>(JitterOp::kSaturation))
      invalid("unknown colour jitter op " + to_string(static_cast<int>(op)));
  for (const RandAugmentStep& step : p.rand_augment) check_rand_augment_step(step);
}

// ---- Per-op reference. ----

void crop_cpu(const uint8_t* src, int h, int w, int x, int y, int cw, int ch, uint8_t* dst) {
  check_crop_box(x, y, cw, ch, h, w);
  for (int r = 0; r < ch; ++r)
    std::memcpy(dst + values(r, cw), src + (static_cast<size_t>(y + r) * w + x) * 3,
                static_cast<size_t>(cw) * 3);
}

void hflip_cpu(const uint8_t* src, int h, int w, uint8_t* dst) {
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      std::memcpy(dst + (static_cast<size_t>(y) * w + x) * 3,
                  src + (static_cast<size_t>(y) * w + (w - 1 - x)) * 3, 3);
}

void pad_reflect_cpu(const uint8_t* src, int h, int w, int p, uint8_t* dst) {
  check_reflect_padding(p, h, w);
  const int out_w = w + 2 * p;
  // Padded pixel (y, x) reads source pixel (reflect(y - p), reflect(x - p)).
  for (int y = 0; y < h + 2 * p; ++y)
    for (int x = 0; x < out_w; ++x)
      std::memcpy(
          dst + (static_cast<size_t>(y) * out_w + x) * 3,
          src + (static_cast<size_t>(reflect_index(y - p, h)) * w + reflect_index(x - p, w)) * 3,
          3);
}

void resize_bicubic_cpu(const uint8_t* src, int h, int w, uint8_t* dst, int out_h, int out_w) {
  check_resize(h, w, out_h, out_w);
  // Horizontal first, into `wide` unless its size stays; then vertical, or a copy.
  Pixels wide;
  const uint8_t* rows = src;
  if (out_w != w) {
    wide.resize(values(h, out_w));
    resample_horizontal(src, h, w, wide.data(), out_w);
    rows = wide.data();
  }
  if (out_h != h) {
    resample_vertical(rows, h, out_w, dst, out_h);
  } else {
    std::memcpy(dst, rows, values(h, out_w));
  }
}

void grayscale_cpu(const uint8_t* src, int h, int w, uint8_t* dst) {
  for (size_t i = 0; i < static_cast<size_t>(h) * w; ++i) {
    const uint8_t* px = src + i * 3;
    const uint8_t grey = luma(px[0], px[1], px[2]);
    for (int c = 0; c < 3; ++c) dst[i * 3 + c] = grey;
  }
}

void solarize_cpu(const uint8_t* src, int h, int w, uint8_t* dst, int threshold) {
  if (threshold < 0 || threshold > 256)
    invalid("solarize threshold must be in [0, 256], got " + to_string(threshold));
  for (size_t i = 0; i < values(h, w); ++i) dst[i] = solarize(src[i], threshold);
}

void gaussian_blur_cpu(const uint8_t* src, int h, int w, float sigma, uint8_t* dst) {
  check_sigma(sigma);
  constexpr int kPasses = 3;
  const BoxBlur k = box_blur(sigma);
  const ptrdiff_t row = static_cast<ptrdiff_t>(w) * 3;
  // Rows: 3 passes, then columns: 3 passes; every pass reads the previous pass's rounded output.
  Pixels image(src, src + values(h, w)), next(values(h, w));
  for (int pass = 0; pass < kPasses; ++pass) {
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c)
          next[y * row + x * 3 + c] = box_blur_at(&image[y * row + c], w, 3, x, k);
    std::swap(image, next);
  }
  for (int pass = 0; pass < kPasses; ++pass) {
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c)
          next[y * row + x * 3 + c] = box_blur_at(&image[x * 3 + c], h, row, y, k);
    std::swap(image, next);
  }
  std::memcpy(dst, image.data(), image.size());
}

void adjust_brightness_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst) {
  check_factor("brightness", factor);
  // ImageEnhance.Brightness (torchvision's adjust_brightness on PIL): blend with black.
  for (size_t i = 0; i < values(h, w); ++i) dst[i] = blend(0, src[i], factor);
}

void adjust_contrast_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst) {
  check_factor("contrast", factor);
  // ImageEnhance.Contrast (torchvision's adjust_contrast on PIL): blend with a uniform grey, the
  // image's mean luma, int(ImageStat.Stat(image.convert('L')).mean[0] + 0.5).
  const size_t pixels = static_cast<size_t>(h) * w;
  unsigned long long luma_sum = 0;
  for (size_t i = 0; i < pixels; ++i) luma_sum += luma(src[i * 3], src[i * 3 + 1], src[i * 3 + 2]);
  const int grey = mean_grey(luma_sum, static_cast<long long>(pixels));
  for (size_t i = 0; i < pixels * 3; ++i) dst[i] = blend(grey, src[i], factor);
}

void adjust_saturation_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst) {
  check_factor("saturation", factor);
  // ImageEnhance.Color (torchvision's adjust_saturation on PIL): blend each pixel with its own
  // luma, image.convert('L').
  for (size_t i = 0; i < static_cast<size_t>(h) * w; ++i) {
    const uint8_t* px = src + i * 3;
    const uint8_t grey = luma(px[0], px[1], px[2]);
    for (int c = 0; c < 3; ++c) dst[i * 3 + c] = blend(grey, px[c], factor);
  }
}

void normalize_cpu(const uint8_t* image, int h, int w, float* out) {
  const size_t plane = static_cast<size_t>(h) * w;
  for (int c = 0; c < 3; ++c)
    for (size_t i = 0; i < plane; ++i) out[c * plane + i] = normalize_value(image[i * 3 + c], c);
}

// ---- Whole view. ----

void crop_view_cpu(const uint8_t* src, int h, int w, const CropParams& c, uint8_t* out) {
  if (c.mode == CropMode::kRandomResized) {
    Pixels box_pixels(values(c.h, c.w));
    crop_cpu(src, h, w, c.x, c.y, c.w, c.h, box_pixels.data());
    resize_bicubic_cpu(box_pixels.data(), c.h, c.w, out, c.size, c.size);
    return;
  }
  // Simple Random Crop and evaluation: resize, reflect-pad, crop. Only the resized pixels the
  // crop reads are made (a 2-row, 20000-column image resized whole to a shorter side of 224
  // would be 2,240,000 wide): padded pixel (y, x) is resized pixel (reflect(y - p),
  // reflect(x - p)), and a resized pixel is resize_bicubic_cpu's: the vertical pass over the
  // horizontal pass's uint8 rows, each pass skipped where its size stays.
  const int rh = c.resized_height, rw = c.resized_width, size = c.size;
  std::vector<int32_t> weights(std::max(resample_max_taps(w, rw), resample_max_taps(h, rh)));
  // Horizontal: every source row, at the resized columns the crop reads -> (h, size, 3).
  Pixels rows(values(h, size));
  for (int x = 0; x < size; ++x) {
    const int column = reflect_index(c.x + x - c.padding, rw);
    const ResampleWindow window = resample_window(w, rw, column);
    resample_weights(window, weights.data());
    // `column` counts resized columns; with rw == w the horizontal pass is skipped and it is the
    // source column itself, else the window's taps say which source columns it reads.
    for (int y = 0; y < h; ++y)
      for (int ch = 0; ch < 3; ++ch) {
        const uint8_t* line = src + static_cast<size_t>(y) * w * 3 + ch;  // row y, channel ch
        rows[(static_cast<size_t>(y) * size + x) * 3 + ch] =
            rw == w ? line[static_cast<size_t>(column) * 3]
                    : resample_at(line + static_cast<size_t>(window.first) * 3, 3, weights.data(),
                                  window.count);
      }
  }
  // Vertical: the resized rows the crop reads -> (size, size, 3).
  const ptrdiff_t row_stride = static_cast<ptrdiff_t>(size) * 3;
  for (int y = 0; y < size; ++y) {
    const int resized_row = reflect_index(c.y + y - c.padding, rh);
    const ResampleWindow window = resample_window(h, rh, resized_row);
    resample_weights(window, weights.data());
    for (int x = 0; x < size; ++x)
      for (int ch = 0; ch < 3; ++ch)
        out[(static_cast<size_t>(y) * size + x) * 3 + ch] =
            rh == h ? rows[resized_row * row_stride + x * 3 + ch]
                    : resample_at(rows.data() + window.first * row_stride + x * 3 + ch, row_stride,
                                  weights.data(), window.count);
  }
}

void augment_image_cpu(const uint8_t* src, int h, int w, const AugmentParams& p, int size,
                       uint8_t* out) {
  check_augment_params(p, h, w, size);
  Pixels image(values(size, size)), next(values(size, size));
  crop_view_cpu(src, h, w, p.crop, image.data());
  // Each op reads `image` and writes `next`; then they swap.
  auto apply = [&](auto op) {
    op(image.data(), next.data());
    std::swap(image, next);
  };
  if (p.flip) apply([&](const uint8_t* a, uint8_t* b) { hflip_cpu(a, size, size, b); });
  switch (p.three_augment) {
    case ThreeAugmentOp::kNone:
      break;
    case ThreeAugmentOp::kGrayscale:
      apply([&](const uint8_t* a, uint8_t* b) { grayscale_cpu(a, size, size, b); });
      break;
    case ThreeAugmentOp::kSolarize:
      apply([&](const uint8_t* a, uint8_t* b) { solarize_cpu(a, size, size, b); });
      break;
    case ThreeAugmentOp::kBlur:
      apply(
          [&](const uint8_t* a, uint8_t* b) { gaussian_blur_cpu(a, size, size, p.blur_sigma, b); });
      break;
  }
  for (JitterOp op : p.jitter_order) {
    switch (op) {
      case JitterOp::kBrightness:
        apply([&](const uint8_t* a, uint8_t* b) {
          adjust_brightness_cpu(a, size, size, p.brightness, b);
        });
        break;
      case JitterOp::kContrast:
        apply([&](const uint8_t* a, uint8_t* b) {
          adjust_contrast_cpu(a, size, size, p.contrast, b);
        });
        break;
      case JitterOp::kSaturation:
        apply([&](const uint8_t* a, uint8_t* b) {
          adjust_saturation_cpu(a, size, size, p.saturation, b);
        });
        break;
    }
  }
  for (const RandAugmentStep& step : p.rand_augment)
    if (step.op != RandAugmentOp::kNone)
      apply([&](const uint8_t* a, uint8_t* b) { rand_augment_step_cpu(a, size, size, step, b); });
  std::memcpy(out, image.data(), image.size());
}

// ---- Batch stage. ----

void augment_batch_cpu(const uint8_t* pixels, const SourceImage* sources,
                       const AugmentParams* params, int64_t batch, int size, float* out) {
  Pixels view(values(size, size));
  for (int64_t i = 0; i < batch; ++i) {
    const SourceImage& s = sources[i];
    augment_image_cpu(pixels + s.offset, s.height, s.width, params[i], size, view.data());
    normalize_cpu(view.data(), size, size, out + static_cast<size_t>(i) * values(size, size));
  }
}

void mix_images_cpu(const MixParams& p, float* images, int64_t batch, int channels, int height,
                    int width) {
  if (batch % 2 != 0) invalid("mixup/cutmix needs an even batch size, got " + to_string(batch));
  if (p.lambda == 1.0) return;
  const size_t plane = static_cast<size_t>(height) * width;
  const size_t sample = plane * channels;
  const float lam = static_cast<float>(p.lambda);
  const float rest = static_cast<float>(1.0 - p.lambda);
  // Pairs (i, batch-1-i): each takes from the other's original values.
  for (int64_t i = 0; i < batch / 2; ++i) {
    float* a = images + sample * i;
    float* b = images + sample * (batch - 1 - i);
    if (p.cutmix) {
      for (int c = 0; c < channels; ++c)
        for (int y = p.y0; y < p.y1; ++y)
          for (int x = p.x0; x < p.x1; ++x) {
            const size_t k = c * plane + static_cast<size_t>(y) * width + x;
            std::swap(a[k], b[k]);
          }
    } else {
      for (size_t k = 0; k < sample; ++k) {
        const float va = a[k], vb = b[k];
        a[k] = mix_value(va, vb, lam, rest);
        b[k] = mix_value(vb, va, lam, rest);
      }
    }
  }
}

void check_labels(const int32_t* labels, int64_t batch, int num_classes) {
  for (int64_t i = 0; i < batch; ++i)
    if (labels[i] < 0 || labels[i] >= num_classes)
      invalid("label " + to_string(labels[i]) + " is outside [0, " + to_string(num_classes) + ")");
}

void mix_targets_cpu(const MixParams& p, const int32_t* labels, int64_t batch, int num_classes,
                     double smoothing, bool binarize, float* targets) {
  check_labels(labels, batch, num_classes);
  const float lam = static_cast<float>(p.lambda);
  const float rest = static_cast<float>(1.0 - p.lambda);
  for (int64_t i = 0; i < batch; ++i) {
    const int own = labels[i];
    const int partner = labels[batch - 1 - i];
    for (int k = 0; k < num_classes; ++k) {
      const float mixed =
          mix_value(smoothed_one_hot(k == own, smoothing, num_classes),
                    smoothed_one_hot(k == partner, smoothing, num_classes), lam, rest);
      targets[i * num_classes + k] = binarize ? (mixed > 0.0f ? 1.0f : 0.0f) : mixed;
    }
  }
}

}  // namespace deit::kernels
