#include "data/augment_params.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#include "data/image.h"

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

// ---- RandAugment (timm 0.3.2, timm/data/auto_augment.py). ----

// The 15 ops of timm's _RAND_TRANSFORMS, in its order. _RAND_INCREASING_TRANSFORMS is the same
// list with the Increasing variants of posterize, solarize and the four enhance ops, so an index
// and the `increasing` flag name an op of either.
enum class TimmOp {
  kAutoContrast,
  kEqualize,
  kInvert,
  kRotate,
  kPosterize,
  kSolarize,
  kSolarizeAdd,
  kColor,
  kContrast,
  kBrightness,
  kSharpness,
  kShearX,
  kShearY,
  kTranslateXRel,
  kTranslateYRel,
};
constexpr int kTimmOps = 15;
constexpr double kMaxLevel = 10.0;  // timm's _MAX_LEVEL: magnitudes are clipped to [0, 10]

// Python's float `x % 360.0`: the sign of the divisor, and +0.0 for a zero remainder.
double python_mod_360(double x) {
  double r = std::fmod(x, 360.0);
  if (r == 0.0) return 0.0;
  return r < 0.0 ? r + 360.0 : r;
}

// Python's round(x, 15): x correctly rounded to 15 decimals, read back as the nearest double.
// glibc's printf rounds the exact binary value correctly, as Python's dtoa does.
double python_round_15(double x) {
  char text[400];  // the longest finite double has 309 integer digits
  std::snprintf(text, sizeof text, "%.15f", x);
  return std::strtod(text, nullptr);
}

[[noreturn]] void bad_spec(const std::string& spec, const std::string& what) {
  throw std::invalid_argument("RandAugment spec '" + spec + "': " + what +
                              " (timm's syntax: rand-m<magnitude>-n<layers>-mstd<std>-inc<0|1>, "
                              "e.g. rand-m9-mstd0.5-inc1)");
}

// A section's whole value as a number. Values start with a digit (or are "inf"), so they are
// never negative or NaN.
double spec_number(const std::string& spec, const std::string& section, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (*end != '\0' || errno == ERANGE)
    bad_spec(spec, "'" + value + "' in section '" + section + "' is not a number");
  return v;
}

// AugmentOp.__call__ of one drawn op: skipped unless random() <= prob, else its magnitude drawn
// and clipped, then the op's level-to-arg function (timm's LEVEL_TO_ARG) for a size x size view.
RandAugmentStep sample_rand_augment_op(const RandAugmentConfig& c, TimmOp op, int size, Rng& rng) {
  if (rng.uniform() > c.prob) return {};
  double magnitude = c.magnitude;
  if (std::isinf(c.magnitude_std)) {
    magnitude = rng.uniform(0.0, magnitude);
  } else if (c.magnitude_std > 0) {
    magnitude += c.magnitude_std * rng.normal();  // random.gauss(magnitude, magnitude_std)
  }
  const double level = std::min(kMaxLevel, std::max(0.0, magnitude)) / kMaxLevel;
  auto negate = [&rng](double v) { return rng.uniform() > 0.5 ? -v : v; };  // _randomly_negate
  // The enhance ops' factor: [0.1, 1.9] rising with the level, or 1 +- up to 0.9 (Increasing).
  auto enhance = [&](RandAugmentOp kernel_op) {
    RandAugmentStep step;
    step.op = kernel_op;
    step.factor = static_cast<float>(c.increasing ? 1.0 + negate(level * 0.9) : level * 1.8 + 0.1);
    return step;
  };
  RandAugmentStep step;
  switch (op) {
    case TimmOp::kAutoContrast:
      step.op = RandAugmentOp::kAutoContrast;
      return step;
    case TimmOp::kEqualize:
      step.op = RandAugmentOp::kEqualize;
      return step;
    case TimmOp::kInvert:
      step.op = RandAugmentOp::kInvert;
      return step;
    case TimmOp::kRotate:
      return rotate_step(negate(level * 30.0), size, size);
    case TimmOp::kPosterize: {
      // Bits kept: 0..4 rising with the level, or falling (Increasing).
      const int bits = static_cast<int>(level * 4);
      step.op = RandAugmentOp::kPosterize;
      step.level = c.increasing ? 4 - bits : bits;
      return step;
    }
    case TimmOp::kSolarize: {
      const int threshold = static_cast<int>(level * 256);
      step.op = RandAugmentOp::kSolarize;
      step.level = c.increasing ? 256 - threshold : threshold;
      return step;
    }
    case TimmOp::kSolarizeAdd:
      step.op = RandAugmentOp::kSolarizeAdd;
      step.level = static_cast<int>(level * 110);
      return step;
    case TimmOp::kColor:
      return enhance(RandAugmentOp::kColor);
    case TimmOp::kContrast:
      return enhance(RandAugmentOp::kContrast);
    case TimmOp::kBrightness:
      return enhance(RandAugmentOp::kBrightness);
    case TimmOp::kSharpness:
      return enhance(RandAugmentOp::kSharpness);
    case TimmOp::kShearX:
      return shear_x_step(negate(level * 0.3));
    case TimmOp::kShearY:
      return shear_y_step(negate(level * 0.3));
    case TimmOp::kTranslateXRel:  // a fraction of the view's width (its height for Y)
      return translate_x_step(negate(level * 0.45) * size);
    case TimmOp::kTranslateYRel:
      return translate_y_step(negate(level * 0.45) * size);
  }
  return step;
}

RandAugmentStep affine_step(double a, double b, double c, double d, double e, double f) {
  RandAugmentStep step;
  step.op = RandAugmentOp::kAffine;
  const double affine[6] = {a, b, c, d, e, f};
  std::copy(affine, affine + 6, step.affine);
  return step;
}

}  // namespace

RandAugmentConfig parse_rand_augment(const std::string& spec) {
  size_t start = spec.find('-');
  if (spec.substr(0, start) != "rand") bad_spec(spec, "it must start with 'rand'");
  // timm's defaults for what the spec leaves out (not the recipe's, RandAugmentConfig's).
  RandAugmentConfig c;
  c.num_layers = 2;
  c.magnitude = kMaxLevel;
  c.magnitude_std = 0;
  c.increasing = false;
  std::set<std::string> seen;
  while (start != std::string::npos) {
    const size_t next = spec.find('-', start + 1);
    const std::string section =
        spec.substr(start + 1, next == std::string::npos ? std::string::npos : next - start - 1);
    start = next;
    // timm splits a section at its first digit: key, then value. "inf" is a value too here.
    size_t split = section.find_first_of("0123456789");
    if (split == std::string::npos && section.size() > 3 &&
        section.compare(section.size() - 3, 3, "inf") == 0)
      split = section.size() - 3;
    const std::string key = section.substr(0, split);
    const std::string value = split == std::string::npos ? "" : section.substr(split);
    if (key != "m" && key != "n" && key != "mstd" && key != "inc") {
      if (key == "w")
        bad_spec(spec, "timm's op weights (section '" + section + "') are not supported");
      bad_spec(spec, "unknown section '" + section + "'");
    }
    if (value.empty()) bad_spec(spec, "section '" + section + "' has no value");
    if (!seen.insert(key).second) bad_spec(spec, "section '" + key + "' is given twice");
    if (key == "m") {
      c.magnitude = spec_number(spec, section, value);
      if (!(c.magnitude >= 0 && c.magnitude <= kMaxLevel))
        bad_spec(spec,
                 "magnitude m must be in [0, 10] (timm clips magnitudes at 10), got " + value);
    } else if (key == "mstd") {
      c.magnitude_std = spec_number(spec, section, value);
    } else if (key == "n") {
      const double n = spec_number(spec, section, value);
      if (!(n >= 1 && n <= kernels::kMaxRandAugmentSteps && n == std::floor(n)))
        bad_spec(spec, "number of ops n must be a whole number in [1, " +
                           std::to_string(kernels::kMaxRandAugmentSteps) + "], got " + value);
      c.num_layers = static_cast<int>(n);
    } else {
      // timm 0.3.2 tests bool(val) of the text, so that its inc0 means inc1 as well; here inc0
      // means what it says, timm's default list.
      if (value != "0" && value != "1") bad_spec(spec, "inc must be 0 or 1, got " + value);
      c.increasing = value == "1";
    }
  }
  return c;
}

std::optional<RandAugmentConfig> rand_augment_option(const std::string& aa) {
  if (aa == "none") return std::nullopt;
  return parse_rand_augment(aa);
}

void use_rand_augment(AugmentConfig& config, const std::string& aa) {
  config.rand_augment = rand_augment_option(aa);
  if (!config.rand_augment) return;
  config.three_augment = false;
  config.color_jitter = 0;
}

RandAugmentStep rotate_step(double degrees, int width, int height) {
  // Pillow 9.4's Image.rotate(degrees, BICUBIC, expand=0), expression by expression. Its fast
  // paths (0 degrees: a copy; 180: a transpose; 90 and 270 on a square image: transposes) give
  // the pixels of this transform too: their matrices map each output pixel centre onto an input
  // pixel centre, where the bicubic weights are (0, 1, 0, 0).
  const double angle = -(python_mod_360(degrees) * (M_PI / 180.0));  // -math.radians(angle)
  const double a = python_round_15(std::cos(angle)), b = python_round_15(std::sin(angle));
  const double d = python_round_15(-std::sin(angle)), e = python_round_15(std::cos(angle));
  const double cx = width / 2.0, cy = height / 2.0;
  // transform(-cx, -cy, matrix), then the centre added back.
  const double c = a * -cx + b * -cy + 0.0;
  const double f = d * -cx + e * -cy + 0.0;
  return affine_step(a, b, c + cx, d, e, f + cy);
}

RandAugmentStep shear_x_step(double factor) { return affine_step(1, factor, 0, 0, 1, 0); }
RandAugmentStep shear_y_step(double factor) { return affine_step(1, 0, 0, factor, 1, 0); }
RandAugmentStep translate_x_step(double pixels) { return affine_step(1, 0, pixels, 0, 1, 0); }
RandAugmentStep translate_y_step(double pixels) { return affine_step(1, 0, 0, 0, 1, pixels); }

ResizedSize shorter_side_resize(int height, int width, int side) {
  const int short_side = std::min(height, width);
  const int long_side = std::max(height, width);
  const int resized_long = static_cast<int>(static_cast<double>(side) * long_side / short_side);
  return height <= width ? ResizedSize{side, resized_long} : ResizedSize{resized_long, side};
}

CropParams sample_crop_params(const AugmentConfig& config, int height, int width, Rng& rng) {
  if (height <= 0 || width <= 0)
    throw std::invalid_argument("cannot crop an empty image (" + std::to_string(width) + "x" +
                                std::to_string(height) + ")");
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
  if (config.rand_augment) {
    // RandAugment.__call__: num_layers ops chosen uniformly with replacement (np.random.choice),
    // each then applied (or skipped) on the size x size view.
    const RandAugmentConfig& ra = *config.rand_augment;
    if (ra.num_layers < 0 || ra.num_layers > kernels::kMaxRandAugmentSteps)
      throw std::invalid_argument("RandAugment: " + std::to_string(ra.num_layers) +
                                  " ops per view, at most " +
                                  std::to_string(kernels::kMaxRandAugmentSteps) + " allowed");
    for (int i = 0; i < ra.num_layers; ++i) {
      const auto op = static_cast<TimmOp>(rng.below(kTimmOps));
      p.rand_augment[i] = sample_rand_augment_op(ra, op, p.crop.size, rng);
    }
  }
  return p;
}

std::string eval_crop_ratio_problem(double crop_ratio, int64_t size) {
  char ratio[32];
  std::snprintf(ratio, sizeof ratio, "%g", crop_ratio);
  if (!(crop_ratio > 0.0 && crop_ratio <= 1.0))
    return std::string("--eval-crop-ratio must be in (0, 1], got ") + ratio;
  if (size / crop_ratio > kMaxImageSide)
    return std::string("--eval-crop-ratio ") + ratio +
           " would resize images to a shorter side of --input-size " + std::to_string(size) +
           " / " + ratio + ", more than " + std::to_string(kMaxImageSide) + " pixels";
  return "";
}

int eval_resize_side(int64_t size, double crop_ratio) {
  return static_cast<int>(static_cast<double>(size) / crop_ratio);
}

AugmentParams eval_augment_params(int height, int width, int size, double crop_ratio) {
  if (height <= 0 || width <= 0)
    throw std::invalid_argument("cannot crop an empty image (" + std::to_string(width) + "x" +
                                std::to_string(height) + ")");
  if (const std::string problem = eval_crop_ratio_problem(crop_ratio, size); !problem.empty())
    throw std::invalid_argument(problem);
  const ResizedSize resized =
      shorter_side_resize(height, width, eval_resize_side(size, crop_ratio));
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
