// The per-value arithmetic of the augment family (kernels/augment.h), written once and compiled
// for both sides: kernels/cpu/augment.cpp loops over it plainly, kernels/cuda/augment_kernels.cuh
// (compiled into kernels/cuda/augment.cu) calls the same functions from its threads. That is why
// the GPU stage reproduces the CPU reference (and so Pillow, data/transforms.h) to the last uint8
// level: both sides evaluate the same expressions in the same order.
//
// One trap is closed explicitly. nvcc fuses a * b + c into one FMA (one rounding instead of two),
// and the host compiler does not (x86-64 without -march has no FMA). Every product that feeds a sum
// therefore goes through mul() / add(), which are plain operators on the host and the
// round-each-operation intrinsics (__dmul_rn, __fadd_rn, ...) on the device, which nvcc never
// fuses. Divisions and square roots are correctly rounded on both sides (IEEE; the device's float
// division too, as long as nothing is built with --use_fast_math).
#pragma once
#include <math.h>

#include <cstddef>
#include <cstdint>

#include "kernels/host_device.h"

namespace deit::kernels::augment_arith {

// ---- Rounded-once arithmetic (see the top of the file). ----

DEIT_HD double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
DEIT_HD double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
DEIT_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DEIT_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
DEIT_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

DEIT_HD int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// numpy's 'reflect' (torchvision's reflect padding of PIL images): index i in [-n + 1, 2n - 1)
// of a line of n values reads index reflect(i), the edge value not repeated.
DEIT_HD int reflect_index(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// ---- Bicubic resampling, as Pillow's Image.resize(BICUBIC) (libImaging/Resample.c). ----

// Pillow keeps 22 fractional bits in its fixed-point weights: 32 bits, minus 8 for the pixel
// value, minus 2 of headroom because the kernel's negative lobes let partial sums leave [0, 255].
constexpr int kResamplePrecisionBits = 22;

// Keys' cubic convolution kernel, a = -0.5 (Pillow's bicubic_filter; R. Keys, "Cubic convolution
// interpolation for digital image processing", 1981), evaluated below in Horner form:
//   |x| < 1:      (a + 2)|x|^3 - (a + 3)|x|^2 + 1
//   1 <= |x| < 2: a (|x|^3 - 5|x|^2 + 8|x| - 4)
DEIT_HD double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  x = ::fabs(x);
  if (x < 1.0) return add(mul(mul(add(mul(a + 2.0, x), -(a + 3.0)), x), x), 1.0);
  if (x < 2.0) return mul(add(mul(add(mul(add(x, -5.0), x), 8.0), x), -4.0), a);
  return 0.0;
}

// The input pixels that output pixel o reads along one axis of in_size -> out_size: `count`
// consecutive pixels from `first` (Pillow's precompute_coeffs, the whole line as the box).
struct ResampleWindow {
  int first = 0;
  int count = 0;
  double center = 0;            // output pixel centre in input coordinates
  double inv_filter_scale = 0;  // the kernel's argument scale
};

// The kernel is stretched by in/out when shrinking (antialiasing) and keeps its width when
// enlarging; window ends are rounded as Pillow rounds them ((int)(v + 0.5)), then clamped.
DEIT_HD ResampleWindow resample_window(int in_size, int out_size, int o) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = scale > 1.0 ? scale : 1.0;
  const double support = 2.0 * filter_scale;
  ResampleWindow w;
  w.center = mul(o + 0.5, scale);
  w.inv_filter_scale = 1.0 / filter_scale;
  const int lo = static_cast<int>(add(add(w.center, -support), 0.5));
  const int hi = static_cast<int>(add(add(w.center, support), 0.5));
  w.first = lo > 0 ? lo : 0;
  w.count = (hi < in_size ? hi : in_size) - w.first;
  return w;
}

// An upper bound of resample_window(in_size, out_size, o).count over every o: the window spans
// at most 2 * support + 1 input pixels (one more for rounding at both ends).
DEIT_HD int resample_max_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double support = 2.0 * (scale > 1.0 ? scale : 1.0);
  return static_cast<int>(::ceil(2.0 * support)) + 2;
}

// The window's fixed-point weights (Pillow's normalize_coeffs_8bpc): kernel values normalised to
// sum to 1, scaled by 2^22 and rounded half away from zero. weights: (window.count).
DEIT_HD void resample_weights(const ResampleWindow& window, int32_t* weights) {
  auto kernel_at = [&](int i) {
    return bicubic_kernel(
        mul(add(add(window.first + i, -window.center), 0.5), window.inv_filter_scale));
  };
  double sum = 0.0;
  for (int i = 0; i < window.count; ++i) sum = add(sum, kernel_at(i));
  for (int i = 0; i < window.count; ++i) {
    const double normalised = sum != 0.0 ? kernel_at(i) / sum : kernel_at(i);
    const double fixed = normalised * (1 << kResamplePrecisionBits);  // a power of two: exact
    weights[i] = static_cast<int32_t>(fixed < 0 ? fixed - 0.5 : fixed + 0.5);
  }
}

// One output value: sum of p[i * step] * weights[i], rounded and clamped to uint8 as Pillow does.
// int32 cannot overflow: |weights| sum to less than 1.3 * 2^22 and values are at most 255.
DEIT_HD uint8_t resample_at(const uint8_t* p, ptrdiff_t step, const int32_t* weights, int count) {
  int32_t acc = 1 << (kResamplePrecisionBits - 1);
  for (int i = 0; i < count; ++i) acc += p[i * step] * weights[i];
  if (acc < 0) return 0;
  acc >>= kResamplePrecisionBits;
  return static_cast<uint8_t>(acc > 255 ? 255 : acc);
}

// ---- Colour. ----

// ITU-R 601-2 luma as Pillow's convert('L') computes it, L = 0.299 R + 0.587 G + 0.114 B, in
// 16-bit fixed point (19595 = 0.299 * 2^16, ...) with rounding (+ 0x8000 before the shift).
DEIT_HD uint8_t luma(uint8_t r, uint8_t g, uint8_t b) {
  return static_cast<uint8_t>((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

// PIL ImageOps.solarize: values from `threshold` up are inverted (3-Augment's threshold: 128).
DEIT_HD uint8_t solarize(uint8_t v, int threshold = 128) {
  return v >= threshold ? static_cast<uint8_t>(255 - v) : v;
}

// Pillow's Image.blend(degenerate, image, factor) for one value: d + f * (v - d) in float32,
// clamped to [0, 255] and truncated. The product and the sum are each rounded to float through
// double, so no fusing can change them: the product is exact in double (a 24-bit float times a
// 9-bit integer), and so is the sum unless the product is so small against d that d is the float
// result either way.
DEIT_HD uint8_t blend(int degenerate, int value, float factor) {
  const float scaled = static_cast<float>(static_cast<double>(factor) * (value - degenerate));
  const float mixed = static_cast<float>(degenerate + static_cast<double>(scaled));
  if (mixed <= 0.0f) return 0;
  if (mixed >= 255.0f) return 255;
  return static_cast<uint8_t>(mixed);
}

// ImageEnhance.Contrast's degenerate grey: int(mean luma + 0.5) (an empty image's is 0: its sum
// is divided by 1, not by 0).
DEIT_HD int mean_grey(unsigned long long luma_sum, long long pixels) {
  const double n = pixels > 1 ? static_cast<double>(pixels) : 1.0;
  return static_cast<int>(static_cast<double>(luma_sum) / n + 0.5);
}

// ---- Pillow's Gaussian blur (libImaging/BoxBlur.c): 3 extended-box passes per axis. ----

// One pass's filter: each output is the sum of the 2r + 1 inputs centred on it with weight ww
// plus the next input on each side with weight fw, in 2^24 fixed point.
struct BoxBlur {
  int r = 0;
  uint32_t ww = 0, fw = 0;
};

// The extended box whose 3-fold convolution has variance sigma^2 (Pillow's _gaussian_blur_radius,
// after Gwosdek et al., "Theoretical foundations of Gaussian convolution by extended box
// filtering", SSVM 2011: radius = integer part l plus fractional part a). `sigma2` is Pillow's
// name for the variance of one pass, sigma^2 / 3. In Pillow's float arithmetic (the sqrt and
// floor in double, as C promotes them), then the weights (the division in float, as Pillow
// computes it).
DEIT_HD BoxBlur box_blur(float sigma) {
  const float sigma2 = div(mul(sigma, sigma), 3.0f);
  const float box_length = static_cast<float>(::sqrt(add(mul(12.0, double{sigma2}), 1.0)));
  const float l = static_cast<float>(::floor((box_length - 1.0) / 2.0));
  float a = mul(add(mul(2.0f, l), 1.0f), add(mul(l, add(l, 1.0f)), -mul(3.0f, sigma2)));
  a = div(a, mul(6.0f, add(sigma2, -mul(add(l, 1.0f), add(l, 1.0f)))));
  const float radius = add(l, a);
  BoxBlur k;
  k.r = static_cast<int>(radius);
  k.ww = static_cast<uint32_t>(div(16777216.0f, add(mul(radius, 2.0f), 1.0f)));
  k.fw = ((1u << 24) - static_cast<uint32_t>(k.r * 2 + 1) * k.ww) / 2;
  return k;
}

// Output i of one pass over a line of n values `step` apart (Pillow's ImagingLineBoxBlur, whose
// running sum is the same integer as this window sum), indices beyond the line clamped to its
// ends, rounded. uint32 is enough: (2r + 1) ww + 2 fw <= 2^24, so a sum is at most 255 * 2^24.
DEIT_HD uint8_t box_blur_at(const uint8_t* line, int n, ptrdiff_t step, int i, const BoxBlur& k) {
  auto at = [&](int j) -> uint32_t { return line[clamp_index(j, n) * step]; };
  uint32_t window = 0;
  for (int j = i - k.r; j <= i + k.r; ++j) window += at(j);
  const uint32_t sum = window * k.ww + (at(i - k.r - 1) + at(i + k.r + 1)) * k.fw;
  return static_cast<uint8_t>((sum + (1u << 23)) >> 24);
}

// ---- To float. ----

// ImageNet mean and std, float32 as torchvision's Normalize holds them.
DEIT_HD constexpr float imagenet_mean(int c) {
  return c == 0 ? 0.485f : (c == 1 ? 0.456f : 0.406f);
}
DEIT_HD constexpr float imagenet_std(int c) { return c == 0 ? 0.229f : (c == 1 ? 0.224f : 0.225f); }

// torchvision ToTensor + Normalize for channel c: (v / 255 - mean) / std, in float32.
DEIT_HD float normalize_value(uint8_t v, int c) {
  return div(add(div(static_cast<float>(v), 255.0f), -imagenet_mean(c)), imagenet_std(c));
}

// ---- Mixup / CutMix (timm). ----

// x * lam + partner * rest in float32, each product rounded before the sum.
DEIT_HD float mix_value(float x, float partner, float lam, float rest) {
  return add(mul(x, lam), mul(partner, rest));
}

// timm's one_hot with label smoothing: off = smoothing / classes, on = 1 - smoothing + off, in
// double, then float32 as the targets tensor holds them.
DEIT_HD float smoothed_one_hot(bool on, double smoothing, int num_classes) {
  const double off = smoothing / num_classes;
  return static_cast<float>(on ? add(1.0 - smoothing, off) : off);
}

}  // namespace deit::kernels::augment_arith
