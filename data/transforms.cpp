#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/augment.h"

namespace deit::data {
namespace {

using std::to_string;

// Every op makes its result here, so a size past the limits is refused before it is allocated.
ImageU8 blank(int height, int width) {
  if (!within_image_limits(width, height))
    throw std::invalid_argument("a " + to_string(width) + "x" + to_string(height) + " result is " +
                                "larger than deit makes (" + image_limits_text() + ")");
  return ImageU8{height, width, std::vector<uint8_t>(static_cast<size_t>(height) * width * 3)};
}

// width x height, as deit prints an image's size everywhere.
std::string dims(const ImageU8& image) {
  return to_string(image.width) + "x" + to_string(image.height);
}

// ---- Named ops. ----

struct NamedOp {
  const char* name;
  const char* usage;
  int arg_count;
  bool arg_optional = false;  // NAME alone is allowed too
};

constexpr NamedOp kNamedOps[] = {
    {"hflip", "hflip", 0},
    {"grayscale", "grayscale", 0},
    {"solarize", "solarize[:THRESHOLD]", 1, true},
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
    {"autocontrast", "autocontrast", 0},
    {"equalize", "equalize", 0},
    {"invert", "invert", 0},
    {"posterize", "posterize:BITS", 1},
    {"solarize-add", "solarize-add:AMOUNT", 1},
    {"sharpness", "sharpness:F", 1},
    {"rotate", "rotate:DEGREES", 1},
    {"shear-x", "shear-x:F", 1},
    {"shear-y", "shear-y:F", 1},
    {"translate-x", "translate-x:PIXELS", 1},
    {"translate-y", "translate-y:PIXELS", 1},
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
  if (args.empty() && op.arg_optional) return values;
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

// An op as written, NAME or NAME:ARGS, with its numbers.
struct ParsedOp {
  const NamedOp* op;
  std::vector<double> args;
};

ParsedOp parse_named_op(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const NamedOp* op = nullptr;
  for (const NamedOp& candidate : kNamedOps)
    if (name == candidate.name) op = &candidate;
  if (op == nullptr)
    throw std::invalid_argument("unknown op '" + name + "'; the ops are:\n" + named_op_usage());
  // "hflip:" or "solarize:": a value left out by mistake, or a stray colon; either way not the
  // op's usage (parse_numbers cannot tell it from no colon).
  if (colon != std::string::npos && args.empty())
    throw std::invalid_argument("op '" + name + "': nothing after the ':' (usage: " + op->usage +
                                ")");
  return {op, parse_numbers(*op, args)};
}

// Pillow takes these arguments as float32: a value beyond its range would become inf.
float as_float(const NamedOp& op, double v) {
  if (std::fabs(v) > std::numeric_limits<float>::max())
    throw std::invalid_argument("op '" + std::string(op.name) + "': " + kernels::number_text(v) +
                                " is beyond a float's range (usage: " + op.usage + ")");
  return static_cast<float>(v);
}

// Up to 1e9 either way: every size, offset and level of an op fits an int with room to spare.
int as_int(const NamedOp& op, double v) {
  const char* problem = v != std::floor(v)   ? " is not an integer"
                        : std::fabs(v) > 1e9 ? " is out of range (at most 1e9 either way)"
                                             : nullptr;
  if (problem)
    throw std::invalid_argument("op '" + std::string(op.name) + "': " + kernels::number_text(v) +
                                problem + " (usage: " + op.usage + ")");
  return static_cast<int>(v);
}

// The RandAugment ops among the named ones, as the step each applies; nullopt for another op.
std::optional<RandAugmentStep> named_rand_augment_step(const NamedOp& op,
                                                       const std::vector<double>& a,
                                                       const ImageU8& image) {
  const std::string name = op.name;
  if (name == "rotate") return rotate_step(a[0], image.width, image.height);
  if (name == "shear-x") return shear_x_step(a[0]);
  if (name == "shear-y") return shear_y_step(a[0]);
  if (name == "translate-x") return translate_x_step(a[0]);
  if (name == "translate-y") return translate_y_step(a[0]);
  RandAugmentStep step;
  if (name == "autocontrast") {
    step.op = RandAugmentOp::kAutoContrast;
  } else if (name == "equalize") {
    step.op = RandAugmentOp::kEqualize;
  } else if (name == "invert") {
    step.op = RandAugmentOp::kInvert;
  } else if (name == "posterize") {
    step.op = RandAugmentOp::kPosterize;
    step.level = as_int(op, a[0]);
  } else if (name == "solarize-add") {
    step.op = RandAugmentOp::kSolarizeAdd;
    step.level = as_int(op, a[0]);
  } else if (name == "sharpness") {
    step.op = RandAugmentOp::kSharpness;
    step.factor = as_float(op, a[0]);
  } else {
    return std::nullopt;
  }
  return step;
}

}  // namespace

// ---- Geometry. ----

ImageU8 crop(const ImageU8& src, int x, int y, int w, int h) {
  kernels::check_crop_box(x, y, w, h, src.height, src.width);
  ImageU8 out = blank(h, w);
  kernels::crop_cpu(src.pixels.data(), src.height, src.width, x, y, w, h, out.pixels.data());
  return out;
}

ImageU8 hflip(const ImageU8& src) {
  ImageU8 out = blank(src.height, src.width);
  kernels::hflip_cpu(src.pixels.data(), src.height, src.width, out.pixels.data());
  return out;
}

ImageU8 pad_reflect(const ImageU8& src, int padding) {
  kernels::check_reflect_padding(padding, src.height, src.width);
  ImageU8 out = blank(src.height + 2 * padding, src.width + 2 * padding);
  kernels::pad_reflect_cpu(src.pixels.data(), src.height, src.width, padding, out.pixels.data());
  return out;
}

ImageU8 resize_bicubic(const ImageU8& src, int out_height, int out_width) {
  kernels::check_resize(src.height, src.width, out_height, out_width);
  ImageU8 out = blank(out_height, out_width);
  kernels::resize_bicubic_cpu(src.pixels.data(), src.height, src.width, out.pixels.data(),
                              out_height, out_width);
  return out;
}

ImageU8 resize_shorter_side(const ImageU8& src, int size) {
  if (size <= 0 || src.pixels.empty())
    throw std::invalid_argument("resize: cannot give the " + dims(src) +
                                " image a shorter side of " + to_string(size));
  const ResizedSize resized = shorter_side_resize(src.height, src.width, size);
  return resize_bicubic(src, resized.height, resized.width);
}

ImageU8 center_crop(const ImageU8& src, int size) {
  if (size <= 0 || size > std::min(src.height, src.width))
    throw std::invalid_argument("center crop size must be in [1, min(H, W)] for the " + dims(src) +
                                " image, got " + to_string(size));
  return crop(src, python_round((src.width - size) / 2.0), python_round((src.height - size) / 2.0),
              size, size);
}

// ---- 3-Augment. ----

ImageU8 grayscale(const ImageU8& src) {
  ImageU8 out = blank(src.height, src.width);
  kernels::grayscale_cpu(src.pixels.data(), src.height, src.width, out.pixels.data());
  return out;
}

ImageU8 solarize(const ImageU8& src, int threshold) {
  ImageU8 out = blank(src.height, src.width);
  kernels::solarize_cpu(src.pixels.data(), src.height, src.width, out.pixels.data(), threshold);
  return out;
}

ImageU8 gaussian_blur(const ImageU8& src, float sigma) {
  ImageU8 out = blank(src.height, src.width);
  kernels::gaussian_blur_cpu(src.pixels.data(), src.height, src.width, sigma, out.pixels.data());
  return out;
}

// ---- Color jitter. ----

ImageU8 adjust_brightness(const ImageU8& src, float factor) {
  ImageU8 out = blank(src.height, src.width);
  kernels::adjust_brightness_cpu(src.pixels.data(), src.height, src.width, factor,
                                 out.pixels.data());
  return out;
}

ImageU8 adjust_contrast(const ImageU8& src, float factor) {
  ImageU8 out = blank(src.height, src.width);
  kernels::adjust_contrast_cpu(src.pixels.data(), src.height, src.width, factor, out.pixels.data());
  return out;
}

ImageU8 adjust_saturation(const ImageU8& src, float factor) {
  ImageU8 out = blank(src.height, src.width);
  kernels::adjust_saturation_cpu(src.pixels.data(), src.height, src.width, factor,
                                 out.pixels.data());
  return out;
}

// ---- Whole transforms. ----

ImageU8 apply_crop(const ImageU8& src, const CropParams& p) {
  AugmentParams crop_only;
  crop_only.crop = p;
  kernels::check_augment_params(crop_only, src.height, src.width, p.size);
  ImageU8 out = blank(p.size, p.size);
  kernels::crop_view_cpu(src.pixels.data(), src.height, src.width, p, out.pixels.data());
  return out;
}

ImageU8 augment_train(const ImageU8& src, const AugmentParams& params) {
  const int size = params.crop.size;
  ImageU8 out = blank(size, size);
  kernels::augment_image_cpu(src.pixels.data(), src.height, src.width, params, size,
                             out.pixels.data());
  return out;
}

ImageU8 eval_transform(const ImageU8& src, int size, double crop_ratio) {
  return apply_crop(src, eval_augment_params(src.height, src.width, size, crop_ratio).crop);
}

// ---- RandAugment. ----

ImageU8 rand_augment_step(const ImageU8& src, const RandAugmentStep& step) {
  ImageU8 out = blank(src.height, src.width);
  kernels::rand_augment_step_cpu(src.pixels.data(), src.height, src.width, step, out.pixels.data());
  return out;
}

// ---- To float. ----

void normalize(const ImageU8& image, float* out) {
  kernels::normalize_cpu(image.pixels.data(), image.height, image.width, out);
}

// ---- Named ops. ----

void check_named_op(const std::string& spec) { parse_named_op(spec); }

ImageU8 apply_named_op(const ImageU8& image, const std::string& spec, Rng& rng) {
  const auto [op, a] = parse_named_op(spec);
  const std::string name = op->name;

  if (name == "hflip") return hflip(image);
  if (name == "grayscale") return grayscale(image);
  if (name == "solarize") return a.empty() ? solarize(image) : solarize(image, as_int(*op, a[0]));
  if (name == "blur") return gaussian_blur(image, as_float(*op, a[0]));
  if (name == "brightness") return adjust_brightness(image, as_float(*op, a[0]));
  if (name == "contrast") return adjust_contrast(image, as_float(*op, a[0]));
  if (name == "saturation") return adjust_saturation(image, as_float(*op, a[0]));
  if (name == "resize") return resize_shorter_side(image, as_int(*op, a[0]));
  if (name == "center-crop") return center_crop(image, as_int(*op, a[0]));
  if (name == "crop")
    return crop(image, as_int(*op, a[0]), as_int(*op, a[1]), as_int(*op, a[2]), as_int(*op, a[3]));
  if (name == "pad-reflect") return pad_reflect(image, as_int(*op, a[0]));
  if (const std::optional<RandAugmentStep> step = named_rand_augment_step(*op, a, image))
    return rand_augment_step(image, *step);
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
