#include "data/resample.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace deit::data {
namespace {

// Pillow keeps 22 fractional bits in its fixed-point weights: 32 bits, minus 8 for the pixel
// value, minus 2 of headroom because the kernel's negative lobes let partial sums leave [0, 255].
constexpr int kPrecisionBits = 22;

// Keys' cubic convolution kernel, a = -0.5 (Pillow's bicubic_filter).
double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// The input pixels that one output pixel reads along one axis: the first index and one
// fixed-point weight per consecutive input pixel.
struct Taps {
  int first = 0;
  std::vector<int32_t> weights;
};

// Pillow's precompute_coeffs followed by normalize_coeffs_8bpc, for the whole image as the box.
// The arithmetic follows Pillow's order of operations so that the rounded weights are identical.
std::vector<Taps> compute_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);  // stretch the kernel only when shrinking
  const double support = 2.0 * filter_scale;
  const double inv_filter_scale = 1.0 / filter_scale;

  std::vector<Taps> taps(out_size);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;  // output pixel centre in input coordinates
    // Window ends rounded as Pillow rounds them ((int)(v + 0.5)), then clamped to the image.
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);

    std::vector<double> w(hi - lo);
    double sum = 0.0;
    for (int i = lo; i < hi; ++i) {
      w[i - lo] = bicubic_kernel((i - center + 0.5) * inv_filter_scale);
      sum += w[i - lo];
    }
    taps[o].first = lo;
    for (double wi : w) {
      const double normalised = sum != 0.0 ? wi / sum : wi;
      const double fixed = normalised * (1 << kPrecisionBits);
      // Round half away from zero, as Pillow does.
      taps[o].weights.push_back(static_cast<int32_t>(fixed < 0 ? fixed - 0.5 : fixed + 0.5));
    }
  }
  return taps;
}

// One output value: sum of p[i * step] * weight[i], then Pillow's rounding and clamping to uint8.
// int32 cannot overflow: |weights| sum to less than 1.3 * 2^22 and values are at most 255.
uint8_t convolve(const uint8_t* p, std::ptrdiff_t step, const std::vector<int32_t>& weights) {
  int32_t acc = 1 << (kPrecisionBits - 1);
  for (size_t i = 0; i < weights.size(); ++i)
    acc += p[static_cast<std::ptrdiff_t>(i) * step] * weights[i];
  if (acc < 0) return 0;
  return static_cast<uint8_t>(std::min(acc >> kPrecisionBits, 255));
}

// (H, W, 3) -> (H, out_width, 3).
ImageU8 resample_horizontal(const ImageU8& src, int out_width) {
  const std::vector<Taps> taps = compute_taps(src.width, out_width);
  ImageU8 out{src.height, out_width,
              std::vector<uint8_t>(static_cast<size_t>(src.height) * out_width * 3)};
  for (int y = 0; y < src.height; ++y)
    for (int x = 0; x < out_width; ++x)
      for (int c = 0; c < 3; ++c)
        out.at(y, x)[c] = convolve(src.at(y, taps[x].first) + c, 3, taps[x].weights);
  return out;
}

// (H, W, 3) -> (out_height, W, 3).
ImageU8 resample_vertical(const ImageU8& src, int out_height) {
  const std::vector<Taps> taps = compute_taps(src.height, out_height);
  const std::ptrdiff_t row = static_cast<std::ptrdiff_t>(src.width) * 3;
  ImageU8 out{out_height, src.width,
              std::vector<uint8_t>(static_cast<size_t>(out_height) * src.width * 3)};
  for (int y = 0; y < out_height; ++y)
    for (int x = 0; x < src.width; ++x)
      for (int c = 0; c < 3; ++c)
        out.at(y, x)[c] = convolve(src.at(taps[y].first, x) + c, row, taps[y].weights);
  return out;
}

}  // namespace

ImageU8 resize_bicubic(const ImageU8& src, int out_height, int out_width) {
  if (src.height <= 0 || src.width <= 0 || out_height <= 0 || out_width <= 0)
    throw std::invalid_argument("resize_bicubic: empty source or target size (" +
                                std::to_string(src.height) + "x" + std::to_string(src.width) +
                                " -> " + std::to_string(out_height) + "x" +
                                std::to_string(out_width) + ")");
  ImageU8 out = out_width != src.width ? resample_horizontal(src, out_width) : src;
  if (out_height != src.height) out = resample_vertical(out, out_height);
  return out;
}

}  // namespace deit::data
