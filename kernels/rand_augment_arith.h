// The per-value arithmetic of RandAugment's ops (kernels/augment.h, RandAugmentOp), written once
// for the CPU twin (kernels/cpu/rand_augment.cpp) and the GPU stage (kernels/cuda/
// augment_kernels.cuh), as kernels/augment_arith.h is for the other augment ops: both sides
// evaluate the same expressions in the same order (products and sums through mul() / add(), never
// fused), so they produce the same uint8 levels. Each function reproduces what Pillow 9.4 computes
// for the call timm's RandAugment makes (timm/data/auto_augment.py); the Pillow source it follows
// is named at each one.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/augment_arith.h"

namespace deit::kernels::augment_arith {

// ---- Table lookups (ImageOps and timm's solarize_add): exact integer formulas. ----

// ImageOps.invert.
DEIT_HD uint8_t invert(uint8_t v) { return static_cast<uint8_t>(255 - v); }

// ImageOps.posterize: keep the top `bits` (0..8) bits.
DEIT_HD uint8_t posterize(uint8_t v, int bits) {
  return static_cast<uint8_t>(v & ~((1 << (8 - bits)) - 1));
}

// timm's solarize_add(img, add, thresh=128).
DEIT_HD uint8_t solarize_add(uint8_t v, int amount) {
  if (v >= 128) return v;
  const int added = v + amount;
  return static_cast<uint8_t>(added > 255 ? 255 : added);
}

// ImageOps.autocontrast (cutoff 0) for value v of a channel whose lowest and highest present
// values are lo and hi: int(v * scale + offset) in double, clamped; unchanged when hi <= lo.
DEIT_HD uint8_t autocontrast_value(int v, int lo, int hi) {
  if (hi <= lo) return static_cast<uint8_t>(v);
  const double scale = 255.0 / (hi - lo);
  const double offset = mul(static_cast<double>(-lo), scale);
  const int stretched = static_cast<int>(add(mul(static_cast<double>(v), scale), offset));
  return static_cast<uint8_t>(stretched < 0 ? 0 : (stretched > 255 ? 255 : stretched));
}

// ImageOps.autocontrast's table for one channel. histogram: (256) counts -> table: (256).
DEIT_HD void autocontrast_table(const uint32_t* histogram, uint8_t* table) {
  int lo = 0, hi = 255;
  while (lo < 255 && histogram[lo] == 0) ++lo;
  while (hi > 0 && histogram[hi] == 0) --hi;
  for (int v = 0; v < 256; ++v) table[v] = autocontrast_value(v, lo, hi);
}

// ImageOps.equalize's table for one channel. histogram: (256) counts -> table: (256).
// Pillow's Python code: the counts of the values present; with at most one, or with
// step = (their total - the last one's count) // 255 equal to 0, the identity; otherwise
// table[i] = n // step with n running from step // 2 and growing by histogram[i] after each entry.
// The top present value can map past 255: Pillow clips the table to uint8 when it applies it.
DEIT_HD void equalize_table(const uint32_t* histogram, uint8_t* table) {
  uint64_t total = 0;
  int present = 0, last = 0;
  for (int i = 0; i < 256; ++i) {
    if (histogram[i] == 0) continue;
    total += histogram[i];
    ++present;
    last = i;
  }
  const uint64_t step = present > 1 ? (total - histogram[last]) / 255 : 0;
  uint64_t n = step / 2;
  for (int i = 0; i < 256; ++i) {
    const uint64_t level = step == 0 ? static_cast<uint64_t>(i) : n / step;
    table[i] = static_cast<uint8_t>(level > 255 ? 255 : level);
    n += histogram[i];
  }
}

// ---- ImageEnhance.Sharpness's degenerate image: ImageFilter.SMOOTH. ----

// Value (y, x, c) of SMOOTH (kernel 1 1 1 / 1 5 1 / 1 1 1, divisor 13) over an (h, w, 3) image,
// as libImaging/Filter.c's ImagingFilter3x3 computes it: float32 weights k / 13, a float sum that
// starts at 0.5 and adds row y + 1, then y, then y - 1, each row's three products summed left to
// right, then clamped and truncated. Border pixels are copied (so are images under 3 x 3, which
// Pillow copies whole).
DEIT_HD uint8_t smooth_at(const uint8_t* image, int h, int w, int y, int x, int c) {
  const ptrdiff_t row = static_cast<ptrdiff_t>(w) * 3;
  const uint8_t* at = image + y * row + x * 3 + c;
  if (y == 0 || y == h - 1 || x == 0 || x == w - 1) return *at;
  constexpr float kSide = 1.0f / 13.0f, kCentre = 5.0f / 13.0f;
  float sum = 0.5f;
  for (int dy = 1; dy >= -1; --dy) {
    const uint8_t* p = at + dy * row;
    const float middle = dy == 0 ? kCentre : kSide;
    sum = add(sum,
              add(add(mul(static_cast<float>(p[-3]), kSide), mul(static_cast<float>(p[0]), middle)),
                  mul(static_cast<float>(p[3]), kSide)));
  }
  if (sum <= 0.0f) return 0;
  if (sum >= 255.0f) return 255;
  return static_cast<uint8_t>(sum);
}

// ---- Image.transform(AFFINE, BICUBIC, fillcolor): rotate, shear and translate. ----

// timm's fill colour for the geometric ops: its img_mean, round(255 * ImageNet mean).
DEIT_HD constexpr uint8_t rand_augment_fill(int c) { return c == 0 ? 124 : (c == 1 ? 116 : 104); }

// libImaging/Geometry.c's BICUBIC: the cubic convolution of v1..v4 at d in [0, 1) between v2 and
// v3 (v2 at d = 0, v3 at d = 1; it does not pass through v1 and v4).
// Its kernel is Keys' with a = -1 (not the a = -0.5 of Image.resize). With integer v's every step
// is exact, so the first pass equals Pillow's int arithmetic.
DEIT_HD double geometry_cubic(double v1, double v2, double v3, double v4, double d) {
  const double p2 = add(-v1, v3);
  const double p3 = add(add(mul(2.0, add(v1, -v2)), v3), -v4);
  const double p4 = add(add(add(-v1, v2), -v3), v4);
  return add(v2, mul(d, add(p2, mul(d, add(p3, mul(d, p4))))));
}

// Pixel (x, y) of the transformed (h, w, 3) image (the output has the input's size): the input
// point a * (x + 0.5, y + 0.5, 1) (affine_transform), or the fill colour where it lies outside
// the input; else bicubic_filter32RGB's 4 x 4 taps around it (clamped to the edges; Pillow
// reuses the previous row past the bottom, which is the same), rows then the column, truncated.
DEIT_HD void affine_bicubic_pixel(const uint8_t* src, int h, int w, const double* a, int x, int y,
                                  uint8_t* out) {
  const double xo = x + 0.5, yo = y + 0.5;
  double xin = add(add(mul(a[0], xo), mul(a[1], yo)), a[2]);
  double yin = add(add(mul(a[3], xo), mul(a[4], yo)), a[5]);
  if (!(xin >= 0.0 && xin < w && yin >= 0.0 && yin < h)) {
    for (int c = 0; c < 3; ++c) out[c] = rand_augment_fill(c);
    return;
  }
  xin = add(xin, -0.5);
  yin = add(yin, -0.5);
  const int fx = static_cast<int>(::floor(xin)), fy = static_cast<int>(::floor(yin));
  const double dx = add(xin, -static_cast<double>(fx)), dy = add(yin, -static_cast<double>(fy));
  int columns[4];
  for (int k = 0; k < 4; ++k) columns[k] = clamp_index(fx - 1 + k, w) * 3;
  for (int c = 0; c < 3; ++c) {
    double rows[4];
    for (int r = 0; r < 4; ++r) {
      const uint8_t* line = src + static_cast<ptrdiff_t>(clamp_index(fy - 1 + r, h)) * w * 3 + c;
      rows[r] = geometry_cubic(line[columns[0]], line[columns[1]], line[columns[2]],
                               line[columns[3]], dx);
    }
    const double v = geometry_cubic(rows[0], rows[1], rows[2], rows[3], dy);
    out[c] = v <= 0.0 ? 0 : (v >= 255.0 ? 255 : static_cast<uint8_t>(v));
  }
}

}  // namespace deit::kernels::augment_arith
