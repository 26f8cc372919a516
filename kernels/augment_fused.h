// How the GPU stage (kernels/cuda/augment.cu) fuses the crop: instead of the CPU twin's sequence
// (crop or resize a whole image, reflect-pad it, cut the window, flip it), each output pixel of
// the view reads its bicubic taps straight from the source, through the index mapping below, and
// only the view's own rows and columns are ever resampled. The per-pixel steps are written here,
// once, for both the CUDA kernels (one thread each) and tests/test_augment_fused.cpp, which runs
// them in plain loops on the host and checks the result against the CPU twin, so that this
// indexing is verified on machines without a GPU too.
//
// A sample's work, in order (each step reads what the previous one wrote):
//   compute_tap            for axis in {columns, rows}, o < size: the window and weights of the
//                          view's column / row o
//   resample_row_pixel     for i < in_h * size: the horizontal pass at the view's columns
//   resample_column_pixel  for i < size * size: the vertical pass at the view's rows -> the view
#pragma once
#include <cstdint>

#include "kernels/augment.h"
#include "kernels/augment_arith.h"

namespace deit::kernels::augment_fused {

using augment_arith::ResampleWindow;

// The bicubic window of one output coordinate: `count` inputs from `first`.
struct TapWindow {
  int32_t first, count;
};

// One sample's resampling: the region of the source that is resampled to out_w x out_h, and where
// the size x size view lies in that resampled image once it is padded by `pad` on every side.
struct Geometry {
  int in_x0, in_y0, in_w, in_h;
  int out_w, out_h;
  int pad, view_x, view_y;
};

DEIT_HD Geometry geometry_of(const CropParams& c, const SourceImage& s) {
  if (c.mode == CropMode::kRandomResized) return {c.x, c.y, c.w, c.h, c.size, c.size, 0, 0, 0};
  return {0, 0, s.width, s.height, c.resized_width, c.resized_height, c.padding, c.x, c.y};
}

// The resampled column that column x of the (flipped) view shows: the flip mirrors the view, the
// view is a window of the padded image, and padding reflects.
DEIT_HD int resampled_column(const Geometry& g, bool flip, int size, int x) {
  const int view_column = flip ? size - 1 - x : x;
  return augment_arith::reflect_index(view_column + g.view_x - g.pad, g.out_w);
}
DEIT_HD int resampled_row(const Geometry& g, int y) {
  return augment_arith::reflect_index(y + g.view_y - g.pad, g.out_h);
}

// One sample's scratch: byte offsets from its SourceImage::scratch_offset, each 16-byte aligned.
struct ScratchLayout {
  int taps_stride;  // int32 weights per window: the larger bound of the two axes
  int64_t windows;  // TapWindow (2, size): axis 0 the view's columns, axis 1 its rows
  int64_t weights;  // int32 (2, size, taps_stride)
  int64_t rows;     // uint8 (in_h, size, 3): the horizontal pass
  int64_t image;    // uint8 (size, size, 3): the view
  int64_t spare;    // uint8 (size, size, 3): the second buffer of the blur, sharpness, affine
  int64_t bytes;
};

DEIT_HD int64_t align_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

DEIT_HD ScratchLayout scratch_layout(const Geometry& g, int size) {
  ScratchLayout l;
  const int column_taps = augment_arith::resample_max_taps(g.in_w, g.out_w);
  const int row_taps = augment_arith::resample_max_taps(g.in_h, g.out_h);
  l.taps_stride = column_taps > row_taps ? column_taps : row_taps;
  const int64_t view = static_cast<int64_t>(size) * size * 3;
  l.windows = 0;
  l.weights = align_up(l.windows + 2 * static_cast<int64_t>(size) * sizeof(TapWindow), 16);
  l.rows =
      align_up(l.weights + 2 * static_cast<int64_t>(size) * l.taps_stride * sizeof(int32_t), 16);
  l.image = align_up(l.rows + static_cast<int64_t>(g.in_h) * size * 3, 16);
  l.spare = align_up(l.image + view, 16);
  l.bytes = align_up(l.spare + view, 16);
  return l;
}

// Whether a view has RandAugment steps (rand_augment_kernel applies them).
DEIT_HD bool has_rand_augment(const AugmentParams& p) {
  for (const RandAugmentStep& step : p.rand_augment)
    if (step.op != RandAugmentOp::kNone) return true;
  return false;
}

// The bytes a sample's scratch takes in the workspace; samples start 256-byte aligned.
inline int64_t sample_scratch_bytes(const SourceImage& s, const AugmentParams& p, int size) {
  return align_up(scratch_layout(geometry_of(p.crop, s), size).bytes, 256);
}

// Everything a sample's steps start from.
struct SampleView {
  SourceImage source;
  bool flip;
  Geometry g;
  ScratchLayout l;
  uint8_t* scratch;  // the sample's scratch (workspace + source.scratch_offset)
};

DEIT_HD SampleView sample_view(const SourceImage* sources, const AugmentParams* params, int b,
                               int size, uint8_t* workspace) {
  SampleView v;
  v.source = sources[b];
  v.flip = params[b].flip;
  v.g = geometry_of(params[b].crop, v.source);
  v.l = scratch_layout(v.g, size);
  v.scratch = workspace + v.source.scratch_offset;
  return v;
}

DEIT_HD TapWindow* windows_of(const SampleView& v, int size, int axis) {
  return reinterpret_cast<TapWindow*>(v.scratch + v.l.windows) + static_cast<int64_t>(axis) * size;
}
DEIT_HD int32_t* weights_of(const SampleView& v, int size, int axis, int o) {
  return reinterpret_cast<int32_t*>(v.scratch + v.l.weights) +
         (static_cast<int64_t>(axis) * size + o) * v.l.taps_stride;
}

// The window and weights of the view's column o (axis 0) or row o (axis 1).
DEIT_HD void compute_tap(const SampleView& v, int size, int axis, int o) {
  const ResampleWindow w =
      axis == 0 ? augment_arith::resample_window(v.g.in_w, v.g.out_w,
                                                 resampled_column(v.g, v.flip, size, o))
                : augment_arith::resample_window(v.g.in_h, v.g.out_h, resampled_row(v.g, o));
  windows_of(v, size, axis)[o] = {w.first, w.count};
  augment_arith::resample_weights(w, weights_of(v, size, axis, o));
}

// Pixel i = r * size + x of the horizontal pass: row r of the resampled region, at the view's
// column x. rows: (in_h, size, 3).
DEIT_HD void resample_row_pixel(const SampleView& v, const uint8_t* pixels, int size, int64_t i) {
  const int r = static_cast<int>(i / size), x = static_cast<int>(i % size);
  const TapWindow w = windows_of(v, size, 0)[x];
  const uint8_t* line =
      pixels + v.source.offset +
      (static_cast<int64_t>(v.g.in_y0 + r) * v.source.width + v.g.in_x0 + w.first) * 3;
  const int32_t* weights = weights_of(v, size, 0, x);
  for (int c = 0; c < 3; ++c)
    v.scratch[v.l.rows + i * 3 + c] = augment_arith::resample_at(line + c, 3, weights, w.count);
}

// Pixel i = y * size + x of the view: the vertical pass over the rows at the view's row y.
// image: (size, size, 3).
DEIT_HD void resample_column_pixel(const SampleView& v, int size, int64_t i) {
  const int y = static_cast<int>(i / size), x = static_cast<int>(i % size);
  const TapWindow w = windows_of(v, size, 1)[y];
  const int64_t row_stride = static_cast<int64_t>(size) * 3;
  const uint8_t* column = v.scratch + v.l.rows + w.first * row_stride + x * 3;
  const int32_t* weights = weights_of(v, size, 1, y);
  for (int c = 0; c < 3; ++c)
    v.scratch[v.l.image + i * 3 + c] =
        augment_arith::resample_at(column + c, row_stride, weights, w.count);
}

}  // namespace deit::kernels::augment_fused
