#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/resample.h"

namespace deit::data {
namespace {

using std::to_string;

ImageU8 blank(int height, int width) {
  return ImageU8{height, width, std::vector<uint8_t>(static_cast<size_t>(height) * width * 3)};
}

std::string dims(const ImageU8& image) {
  return to_string(image.height) + "x" + to_string(image.width);
}

// Python's round(): half to even, which std::nearbyint gives in the default rounding mode.
int python_round(double v) { return static_cast<int>(std::nearbyint(v)); }

// Pillow's Image.blend for one channel value: d + f * (v - d) in float32, clamped, truncated.
// The product and the sum are each rounded to float explicitly (through double, where both are
// exact) so the compiler cannot fuse them into one FMA and round differently from Pillow.
uint8_t blend(int degenerate, int value, float factor) {
  const float scaled = static_cast<float>(static_cast<double>(factor) * (value - degenerate));
  const float mixed = static_cast<float>(degenerate + static_cast<double>(scaled));
  if (mixed <= 0.0f) return 0;
  if (mixed >= 255.0f) return 255;
  return static_cast<uint8_t>(mixed);
}

void check_factor(const char* what, float factor) {
  if (!(factor >= 0.0f) || !std::isfinite(factor))
    throw std::invalid_argument(std::string(what) + " factor must be a finite number >= 0, got " +
                                to_string(factor));
}

// ---- Pillow's Gaussian blur (libImaging/BoxBlur.c). ----

// The radius of the extended box filter whose 3-fold convolution has variance sigma^2
// (Pillow's _gaussian_blur_radius): integer part l plus fractional part a, in Pillow's float
// arithmetic (the sqrt and floor in double, as C promotes them there).
float extended_box_radius(float sigma) {
  const float sigma2 = sigma * sigma / 3;
  const float box_length = static_cast<float>(std::sqrt(12.0 * sigma2 + 1.0));
  const float l = static_cast<float>(std::floor((box_length - 1.0) / 2.0));
  float a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2);
  a /= 6 * (sigma2 - (l + 1) * (l + 1));
  return l + a;
}

// One extended-box pass over a line of n values `step` bytes apart (Pillow's
// ImagingLineBoxBlur): each output is the sum of the 2r + 1 inputs centred on it with weight ww
// plus the next input on each side with weight fw, in 2^24 fixed point, rounded. Indices beyond
// the line are clamped to its ends. Pillow slides a running sum; the window sum is the same
// integer. uint32 is enough: (2r + 1) ww + 2 fw <= 2^24, so a sum is at most 255 * 2^24.
void box_blur_line(const uint8_t* in, uint8_t* out, int n, std::ptrdiff_t step, int r, uint32_t ww,
                   uint32_t fw) {
  auto at = [&](int i) -> uint32_t { return in[std::clamp(i, 0, n - 1) * step]; };
  for (int i = 0; i < n; ++i) {
    uint32_t window = 0;
    for (int k = -r; k <= r; ++k) window += at(i + k);
    const uint32_t sum = window * ww + (at(i - r - 1) + at(i + r + 1)) * fw;
    out[i * step] = static_cast<uint8_t>((sum + (1u << 23)) >> 24);
  }
}

// ---- Named ops. ----

struct NamedOp {
  const char* name;
  const char* usage;
  int arg_count;
};

constexpr NamedOp kNamedOps[] = {
    {"hflip", "hflip", 0},
    {"grayscale", "grayscale", 0},
    {"solarize", "solarize", 0},
    {"blur", "blur:SIGMA", 1},
    {"brightness", "brightness:F", 1},
    {"contrast", "contrast:F", 1},
    {"saturation", "saturation:F", 1},
    {"resize", "resize:SHORT_SIDE", 1},
    {"center-crop", "center-crop:SIZE", 1},
    {"crop", "crop:X,Y,W,H", 4},
    {"pad-reflect", "pad-reflect:P", 1},
    {"rrc", "rrc:SIZE", 1},
    {"src", "src:SIZE", 1},
};

// The comma-separated numbers after "NAME:", exactly `count` of them.
std::vector<double> parse_numbers(const NamedOp& op, const std::string& args) {
  std::vector<double> values;
  if (op.arg_count == 0) {
    if (!args.empty())
      throw std::invalid_argument("op '" + std::string(op.name) + "' takes no argument, got '" +
                                  args + "'");
    return values;
  }
  if (args.empty())
    throw std::invalid_argument("op '" + std::string(op.name) + "' needs " +
                                to_string(op.arg_count) + " argument(s) (usage: " + op.usage + ")");
  size_t start = 0;
  for (;;) {
    const size_t comma = args.find(',', start);
    const std::string item =
        args.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0' || !std::isfinite(v))
      throw std::invalid_argument("op '" + std::string(op.name) + "': '" + item +
                                  "' is not a number (usage: " + op.usage + ")");
    values.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (static_cast<int>(values.size()) != op.arg_count)
    throw std::invalid_argument("op '" + std::string(op.name) + "' needs " +
                                to_string(op.arg_count) + " argument(s), got '" + args +
                                "' (usage: " + op.usage + ")");
  return values;
}

int as_int(const NamedOp& op, double v) {
  if (v != std::floor(v) || std::fabs(v) > 1e9)
    throw std::invalid_argument("op '" + std::string(op.name) + "': " + to_string(v) +
                                " is not an integer (usage: " + op.usage + ")");
  return static_cast<int>(v);
}

}  // namespace

// ---- Geometry. ----

ImageU8 crop(const ImageU8& src, int x, int y, int w, int h) {
  if (x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > src.width || y + h > src.height)
    throw std::invalid_argument("crop box x=" + to_string(x) + " y=" + to_string(y) +
                                " w=" + to_string(w) + " h=" + to_string(h) +
                                " is not inside the " + dims(src) + " image");
  ImageU8 out = blank(h, w);
  for (int r = 0; r < h; ++r)
    std::copy_n(src.at(y + r, x), static_cast<size_t>(w) * 3, out.at(r, 0));
  return out;
}

ImageU8 hflip(const ImageU8& src) {
  ImageU8 out = blank(src.height, src.width);
  for (int y = 0; y < src.height; ++y)
    for (int x = 0; x < src.width; ++x) std::copy_n(src.at(y, src.width - 1 - x), 3, out.at(y, x));
  return out;
}

ImageU8 pad_reflect(const ImageU8& src, int padding) {
  if (padding < 0 || padding >= std::min(src.height, src.width))
    throw std::invalid_argument("reflect padding must be in [0, min(H, W)) for the " + dims(src) +
                                " image, got " + to_string(padding));
  // Padded index i in [-padding, n + padding) reads source index reflect(i).
  auto reflect = [](int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); };
  ImageU8 out = blank(src.height + 2 * padding, src.width + 2 * padding);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x)
      std::copy_n(src.at(reflect(y - padding, src.height), reflect(x - padding, src.width)), 3,
                  out.at(y, x));
  return out;
}

ImageU8 resize_shorter_side(const ImageU8& src, int size) {
  if (size <= 0 || src.pixels.empty())
    throw std::invalid_argument("resize: cannot give the " + dims(src) +
                                " image a shorter side of " + to_string(size));
  const int short_side = std::min(src.height, src.width);
  const int long_side = std::max(src.height, src.width);
  const int resized_long = static_cast<int>(static_cast<double>(size) * long_side / short_side);
  return src.height <= src.width ? resize_bicubic(src, size, resized_long)
                                 : resize_bicubic(src, resized_long, size);
}

ImageU8 center_crop(const ImageU8& src, int size) {
  if (size <= 0 || size > std::min(src.height, src.width))
    throw std::invalid_argument("center crop size must be in [1, min(H, W)] for the " + dims(src) +
                                " image, got " + to_string(size));
  return crop(src, python_round((src.width - size) / 2.0), python_round((src.height - size) / 2.0),
              size, size);
}

// ---- 3-Augment. ----

uint8_t luma(const uint8_t* rgb) {
  return static_cast<uint8_t>((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
}

ImageU8 grayscale(const ImageU8& src) {
  ImageU8 out = blank(src.height, src.width);
  for (int y = 0; y < src.height; ++y)
    for (int x = 0; x < src.width; ++x) std::fill_n(out.at(y, x), 3, luma(src.at(y, x)));
  return out;
}

ImageU8 solarize(const ImageU8& src) {
  ImageU8 out = src;
  for (uint8_t& v : out.pixels)
    if (v >= 128) v = static_cast<uint8_t>(255 - v);
  return out;
}

ImageU8 gaussian_blur(const ImageU8& src, float sigma) {
  // The bound keeps the box radius an int and the O(width * radius) passes short.
  if (!(sigma >= 0.0f && sigma <= 1000.0f))
    throw std::invalid_argument("blur sigma must be in [0, 1000], got " + to_string(sigma));
  constexpr int kPasses = 3;
  const float radius = extended_box_radius(sigma);
  const int r = static_cast<int>(radius);
  // Weights in 2^24 fixed point, computed as Pillow does (the division in float).
  const uint32_t ww = static_cast<uint32_t>(16777216.0f / (radius * 2 + 1));
  const uint32_t fw = ((1u << 24) - static_cast<uint32_t>(r * 2 + 1) * ww) / 2;

  const std::ptrdiff_t row = static_cast<std::ptrdiff_t>(src.width) * 3;
  ImageU8 image = src;
  // Rows: 3 passes, then columns: 3 passes; every pass reads the previous pass's rounded output.
  for (int pass = 0; pass < kPasses; ++pass) {
    ImageU8 next = blank(image.height, image.width);
    for (int y = 0; y < image.height; ++y)
      for (int c = 0; c < 3; ++c)
        box_blur_line(image.at(y, 0) + c, next.at(y, 0) + c, image.width, 3, r, ww, fw);
    image = std::move(next);
  }
  for (int pass = 0; pass < kPasses; ++pass) {
    ImageU8 next = blank(image.height, image.width);
    for (int x = 0; x < image.width; ++x)
      for (int c = 0; c < 3; ++c)
        box_blur_line(image.at(0, x) + c, next.at(0, x) + c, image.height, row, r, ww, fw);
    image = std::move(next);
  }
  return image;
}

// ---- Color jitter. ----

ImageU8 adjust_brightness(const ImageU8& src, float factor) {
  check_factor("brightness", factor);
  ImageU8 out = src;
  for (uint8_t& v : out.pixels) v = blend(0, v, factor);
  return out;
}

ImageU8 adjust_contrast(const ImageU8& src, float factor) {
  check_factor("contrast", factor);
  // ImageEnhance.Contrast: int(ImageStat.Stat(image.convert('L')).mean + 0.5).
  uint64_t luma_sum = 0;
  for (int y = 0; y < src.height; ++y)
    for (int x = 0; x < src.width; ++x) luma_sum += luma(src.at(y, x));
  const double pixels = std::max(1.0, static_cast<double>(src.height) * src.width);
  const int grey = static_cast<int>(static_cast<double>(luma_sum) / pixels + 0.5);
  ImageU8 out = src;
  for (uint8_t& v : out.pixels) v = blend(grey, v, factor);
  return out;
}

ImageU8 adjust_saturation(const ImageU8& src, float factor) {
  check_factor("saturation", factor);
  ImageU8 out = src;
  for (int y = 0; y < src.height; ++y)
    for (int x = 0; x < src.width; ++x) {
      const uint8_t grey = luma(src.at(y, x));
      for (int c = 0; c < 3; ++c) out.at(y, x)[c] = blend(grey, src.at(y, x)[c], factor);
    }
  return out;
}

// ---- Whole transforms. ----

ImageU8 apply_crop(const ImageU8& src, const CropParams& p) {
  if (p.mode == CropMode::kRandomResized)
    return resize_bicubic(crop(src, p.x, p.y, p.w, p.h), p.size, p.size);
  const ImageU8 padded =
      pad_reflect(resize_bicubic(src, p.resized_height, p.resized_width), p.padding);
  return crop(padded, p.x, p.y, p.w, p.h);
}

ImageU8 augment_train(const ImageU8& src, const AugmentParams& params) {
  ImageU8 image = apply_crop(src, params.crop);
  if (params.flip) image = hflip(image);
  switch (params.three_augment) {
    case ThreeAugmentOp::kNone:
      break;
    case ThreeAugmentOp::kGrayscale:
      image = grayscale(image);
      break;
    case ThreeAugmentOp::kSolarize:
      image = solarize(image);
      break;
    case ThreeAugmentOp::kBlur:
      image = gaussian_blur(image, params.blur_sigma);
      break;
  }
  for (JitterOp op : params.jitter_order) {
    switch (op) {
      case JitterOp::kBrightness:
        image = adjust_brightness(image, params.brightness);
        break;
      case JitterOp::kContrast:
        image = adjust_contrast(image, params.contrast);
        break;
      case JitterOp::kSaturation:
        image = adjust_saturation(image, params.saturation);
        break;
    }
  }
  return image;
}

ImageU8 eval_transform(const ImageU8& src, int size, double crop_ratio) {
  if (!(crop_ratio > 0.0 && crop_ratio <= 1.0))
    throw std::invalid_argument("eval crop ratio must be in (0, 1], got " + to_string(crop_ratio));
  return center_crop(resize_shorter_side(src, static_cast<int>(size / crop_ratio)), size);
}

// ---- To float. ----

void normalize(const ImageU8& image, float* out) {
  const size_t plane = static_cast<size_t>(image.height) * image.width;
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < image.height; ++y)
      for (int x = 0; x < image.width; ++x) {
        const float unit = static_cast<float>(image.at(y, x)[c]) / 255.0f;  // ToTensor
        out[c * plane + static_cast<size_t>(y) * image.width + x] =
            (unit - kImageNetMean[c]) / kImageNetStd[c];
      }
}

// ---- Named ops. ----

ImageU8 apply_named_op(const ImageU8& image, const std::string& spec, Rng& rng) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const NamedOp* op = nullptr;
  for (const NamedOp& candidate : kNamedOps)
    if (name == candidate.name) op = &candidate;
  if (op == nullptr)
    throw std::invalid_argument("unknown op '" + name + "'; the ops are:\n" + named_op_usage());
  const std::vector<double> a = parse_numbers(*op, args);

  if (name == "hflip") return hflip(image);
  if (name == "grayscale") return grayscale(image);
  if (name == "solarize") return solarize(image);
  if (name == "blur") return gaussian_blur(image, static_cast<float>(a[0]));
  if (name == "brightness") return adjust_brightness(image, static_cast<float>(a[0]));
  if (name == "contrast") return adjust_contrast(image, static_cast<float>(a[0]));
  if (name == "saturation") return adjust_saturation(image, static_cast<float>(a[0]));
  if (name == "resize") return resize_shorter_side(image, as_int(*op, a[0]));
  if (name == "center-crop") return center_crop(image, as_int(*op, a[0]));
  if (name == "crop")
    return crop(image, as_int(*op, a[0]), as_int(*op, a[1]), as_int(*op, a[2]), as_int(*op, a[3]));
  if (name == "pad-reflect") return pad_reflect(image, as_int(*op, a[0]));
  // rrc and src: the random crop of the recipe alone, at the given size.
  AugmentConfig config;
  config.input_size = as_int(*op, a[0]);
  config.crop = name == "rrc" ? CropMode::kRandomResized : CropMode::kSimpleRandom;
  return apply_crop(image, sample_crop_params(config, image.height, image.width, rng));
}

std::string named_op_usage() {
  std::string usage;
  for (const NamedOp& op : kNamedOps)
    usage += std::string(usage.empty() ? "  " : "\n  ") + op.usage;
  return usage;
}

}  // namespace deit::data
