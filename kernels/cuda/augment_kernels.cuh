// The device code of the GPU augmentation stage (kernels/cuda/augment.cu says what each launch
// does and how the five per-sample launches fit together): the tap, resample, finish and
// rand_augment kernels, whose per-pixel steps are kernels/augment_fused.h's and whose arithmetic
// is kernels/augment_arith.h's, then the mixup, cutmix and target kernels.
//
// Included by augment.cu, and by the emulated test (tests/emulated/augment_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh, the augment headers, and the built-ins the
// emulator provides; anything more needs a stand-in there. Each includer is the only translation
// unit of its program with these kernels, hence the unnamed namespace.
#pragma once
#include <cstdint>

#include "kernels/augment.h"
#include "kernels/augment_arith.h"
#include "kernels/augment_fused.h"
#include "kernels/cuda/augment_launch.h"
#include "kernels/cuda/common_device.cuh"
#include "kernels/rand_augment_arith.h"

namespace deit::kernels {
namespace {

using namespace augment_arith;
using namespace augment_fused;

__global__ void __launch_bounds__(kTapThreads)
    taps_kernel(const SourceImage* sources, const AugmentParams* params, int size,
                uint8_t* workspace) {
  const int b = blockIdx.z, axis = blockIdx.y;
  const int o = blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= size) return;
  compute_tap(sample_view(sources, params, b, size, workspace), size, axis, o);
}

__global__ void __launch_bounds__(kResampleThreads)
    resample_rows_kernel(const uint8_t* pixels, const SourceImage* sources,
                         const AugmentParams* params, int size, uint8_t* workspace) {
  const SampleView v = sample_view(sources, params, blockIdx.y, size, workspace);
  const int64_t n = static_cast<int64_t>(v.g.in_h) * size;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    resample_row_pixel(v, pixels, size, i);
}

__global__ void __launch_bounds__(kResampleThreads)
    resample_columns_kernel(const SourceImage* sources, const AugmentParams* params, int size,
                            uint8_t* workspace) {
  const SampleView v = sample_view(sources, params, blockIdx.y, size, workspace);
  const int64_t n = static_cast<int64_t>(size) * size;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    resample_column_pixel(v, size, i);
}

// The sum over the block of each thread's `value` (integers: exact in any order), returned to
// every thread. warp_sums: kFinishThreads / 32 shared slots.
__device__ unsigned long long block_sum(unsigned long long value, unsigned long long* warp_sums) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  unsigned long long total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += warp_sums[w];
  __syncthreads();  // every thread has read warp_sums before anyone may write it again
  return total;
}

// Pillow's Gaussian blur of the size x size view: 3 passes along the rows, then 3 along the
// columns, alternating between `image` and `spare`. Six passes: the result is back in `image`.
__device__ void blur_view(uint8_t* image, uint8_t* spare, int size, const BoxBlur& k) {
  const int row = size * 3, n = size * row;
  uint8_t* in = image;
  uint8_t* out = spare;
  for (int pass = 0; pass < 6; ++pass) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int y = i / row, x = i % row / 3, c = i % 3;
      out[i] = pass < 3 ? box_blur_at(in + y * row + c, size, 3, x, k)
                        : box_blur_at(in + x * 3 + c, size, row, y, k);
    }
    __syncthreads();
    const auto previous = in;
    in = out;
    out = previous;
  }
}

// The ImageEnhance blends over the size x size view, by the whole block (each value reads only
// its own pixel, so in place): Brightness blends with black, Contrast with the mean luma's grey
// (a block reduction of integers, exact in any order), Color with each pixel's own luma.
__device__ void brightness_view(uint8_t* image, int size, float factor) {
  for (int i = threadIdx.x; i < size * size * 3; i += blockDim.x)
    image[i] = blend(0, image[i], factor);
}
__device__ void contrast_view(uint8_t* image, int size, float factor,
                              unsigned long long* warp_sums) {
  const int pixels = size * size;
  unsigned long long luma_sum = 0;
  for (int q = threadIdx.x; q < pixels; q += blockDim.x)
    luma_sum += luma(image[q * 3], image[q * 3 + 1], image[q * 3 + 2]);
  const int grey = mean_grey(block_sum(luma_sum, warp_sums), pixels);
  for (int i = threadIdx.x; i < pixels * 3; i += blockDim.x)
    image[i] = blend(grey, image[i], factor);
}
__device__ void saturation_view(uint8_t* image, int size, float factor) {
  for (int q = threadIdx.x; q < size * size; q += blockDim.x) {
    uint8_t* px = image + q * 3;
    const uint8_t grey = luma(px[0], px[1], px[2]);
    for (int c = 0; c < 3; ++c) px[c] = blend(grey, px[c], factor);
  }
}

// The block's shared state for RandAugment's histogram ops.
struct ChannelTables {
  uint32_t histograms[3][256];
  uint8_t tables[3][256];
};

// ImageOps.autocontrast / equalize over the view: each channel's histogram (shared-memory
// atomics: integer counts, the same in any order), then one thread per channel builds its table
// (256 sequential steps, as Python does), then every value is looked up.
__device__ void histogram_op_view(uint8_t* image, int size, RandAugmentOp op, ChannelTables& t) {
  const int n = size * size * 3;
  for (int i = threadIdx.x; i < 3 * 256; i += blockDim.x) t.histograms[i / 256][i % 256] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) atomicAdd(&t.histograms[i % 3][image[i]], 1u);
  __syncthreads();
  if (threadIdx.x < 3) {
    const int c = threadIdx.x;
    if (op == RandAugmentOp::kEqualize)
      equalize_table(t.histograms[c], t.tables[c]);
    else
      autocontrast_table(t.histograms[c], t.tables[c]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) image[i] = t.tables[i % 3][image[i]];
}

// One RandAugment step over the view, by the whole block; ops that read neighbours (sharpness,
// the affine transform) write `spare` first. Ends with the block synchronised.
__device__ void rand_augment_view(uint8_t* image, uint8_t* spare, int size,
                                  const RandAugmentStep& s, ChannelTables& tables,
                                  unsigned long long* warp_sums) {
  const int pixels = size * size, n = pixels * 3;
  switch (s.op) {
    case RandAugmentOp::kNone:
      return;
    case RandAugmentOp::kAutoContrast:
    case RandAugmentOp::kEqualize:
      histogram_op_view(image, size, s.op, tables);
      break;
    case RandAugmentOp::kInvert:
      for (int i = threadIdx.x; i < n; i += blockDim.x) image[i] = invert(image[i]);
      break;
    case RandAugmentOp::kPosterize:
      for (int i = threadIdx.x; i < n; i += blockDim.x) image[i] = posterize(image[i], s.level);
      break;
    case RandAugmentOp::kSolarize:
      for (int i = threadIdx.x; i < n; i += blockDim.x) image[i] = solarize(image[i], s.level);
      break;
    case RandAugmentOp::kSolarizeAdd:
      for (int i = threadIdx.x; i < n; i += blockDim.x) image[i] = solarize_add(image[i], s.level);
      break;
    case RandAugmentOp::kColor:
      saturation_view(image, size, s.factor);
      break;
    case RandAugmentOp::kContrast:
      contrast_view(image, size, s.factor, warp_sums);
      break;
    case RandAugmentOp::kBrightness:
      brightness_view(image, size, s.factor);
      break;
    case RandAugmentOp::kSharpness:
      for (int i = threadIdx.x; i < n; i += blockDim.x)
        spare[i] = smooth_at(image, size, size, i / 3 / size, i / 3 % size, i % 3);
      __syncthreads();
      for (int i = threadIdx.x; i < n; i += blockDim.x)
        image[i] = blend(spare[i], image[i], s.factor);
      break;
    case RandAugmentOp::kAffine:
      for (int q = threadIdx.x; q < pixels; q += blockDim.x)
        affine_bicubic_pixel(image, size, size, s.affine, q % size, q / size, spare + q * 3);
      __syncthreads();
      for (int i = threadIdx.x; i < n; i += blockDim.x) image[i] = spare[i];
      break;
  }
  __syncthreads();
}

// The view (size, size, 3) uint8 -> sample b's (3, size, size) float planes, by the block;
// consecutive threads write consecutive floats.
__device__ void normalize_view(const uint8_t* image, int size, int b, float* out) {
  const int pixels = size * size, n = pixels * 3;
  float* planes = out + static_cast<int64_t>(b) * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int c = i / pixels, q = i % pixels;
    planes[i] = normalize_value(image[q * 3 + c], c);
  }
}

// One block per sample: 3-Augment, colour jitter, then normalisation, unless the sample has
// RandAugment steps, which rand_augment_kernel applies and normalises (see the top of the file).
// Two blocks per SM: ptxas fits it in 32 registers without spilling (sm_80, sm_90), where left
// free it takes 42, which leaves room for one 1024-thread block.
__global__ void __launch_bounds__(kFinishThreads, 2)
    finish_kernel(const SourceImage* sources, const AugmentParams* params, int size,
                  uint8_t* workspace, float* out) {
  __shared__ unsigned long long warp_sums[kFinishThreads / 32];
  const int b = blockIdx.x;
  const SampleView v = sample_view(sources, params, b, size, workspace);
  const AugmentParams& p = params[b];
  uint8_t* image = v.scratch + v.l.image;
  uint8_t* spare = v.scratch + v.l.spare;
  const int pixels = size * size, n = pixels * 3;

  switch (p.three_augment) {
    case ThreeAugmentOp::kNone:
      break;
    case ThreeAugmentOp::kGrayscale:
      for (int q = threadIdx.x; q < pixels; q += blockDim.x) {
        uint8_t* px = image + q * 3;
        px[0] = px[1] = px[2] = luma(px[0], px[1], px[2]);
      }
      break;
    case ThreeAugmentOp::kSolarize:
      for (int i = threadIdx.x; i < n; i += blockDim.x) image[i] = solarize(image[i]);
      break;
    case ThreeAugmentOp::kBlur:
      blur_view(image, spare, size, box_blur(p.blur_sigma));
      break;
  }
  __syncthreads();

  for (int j = 0; j < 3; ++j) {
    switch (p.jitter_order[j]) {
      case JitterOp::kBrightness:
        brightness_view(image, size, p.brightness);
        break;
      case JitterOp::kContrast:
        contrast_view(image, size, p.contrast, warp_sums);
        break;
      case JitterOp::kSaturation:
        saturation_view(image, size, p.saturation);
        break;
    }
    __syncthreads();
  }

  if (!has_rand_augment(p)) normalize_view(image, size, b, out);
}

// One block per sample with RandAugment steps: the steps, then normalisation; the other blocks
// return at once. A kernel of its own because the steps need twice finish_kernel's registers,
// which would halve its occupancy in pre-training, where no view has a step.
__global__ void __launch_bounds__(kFinishThreads)
    rand_augment_kernel(const SourceImage* sources, const AugmentParams* params, int size,
                        uint8_t* workspace, float* out) {
  const int b = blockIdx.x;
  const AugmentParams& p = params[b];
  if (!has_rand_augment(p)) return;
  __shared__ unsigned long long warp_sums[kFinishThreads / 32];
  __shared__ ChannelTables tables;
  const SampleView v = sample_view(sources, params, b, size, workspace);
  uint8_t* image = v.scratch + v.l.image;
  for (int j = 0; j < kMaxRandAugmentSteps; ++j)
    rand_augment_view(image, v.scratch + v.l.spare, size, p.rand_augment[j], tables, warp_sums);
  normalize_view(image, size, b, out);
}

// Pair (i, batch-1-i) for i < batch / 2, element k of a sample: both blended from the originals.
__global__ void __launch_bounds__(gpu::kThreads)
    mixup_kernel(float* images, int64_t batch, int64_t sample, float lam, float rest) {
  const int64_t n = batch / 2 * sample;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = j / sample, k = j % sample;
    float* a = images + i * sample + k;
    float* b = images + (batch - 1 - i) * sample + k;
    const float va = *a, vb = *b;
    *a = mix_value(va, vb, lam, rest);
    *b = mix_value(vb, va, lam, rest);
  }
}

// Pair (i, batch-1-i), channel c, pixel (y, x) of the box: swapped.
__global__ void __launch_bounds__(gpu::kThreads)
    cutmix_kernel(float* images, int64_t batch, int channels, int height, int width, MixParams p) {
  const int box_h = p.y1 - p.y0, box_w = p.x1 - p.x0;
  const int64_t sample = static_cast<int64_t>(channels) * height * width;
  const int64_t n = batch / 2 * channels * box_h * box_w;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int x = p.x0 + static_cast<int>(j % box_w);
    const int y = p.y0 + static_cast<int>(j / box_w % box_h);
    const int c = static_cast<int>(j / box_w / box_h % channels);
    const int64_t i = j / box_w / box_h / channels;
    const int64_t k = (static_cast<int64_t>(c) * height + y) * width + x;
    float* a = images + i * sample + k;
    float* b = images + (batch - 1 - i) * sample + k;
    const float va = *a;
    *a = *b;
    *b = va;
  }
}

// Row i, class k of the targets.
__global__ void __launch_bounds__(gpu::kThreads)
    mix_targets_kernel(const int32_t* labels, int64_t batch, int num_classes, double smoothing,
                       bool binarize, float lam, float rest, float* targets) {
  const int64_t n = batch * num_classes;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = j / num_classes;
    const int k = static_cast<int>(j % num_classes);
    const float mixed =
        mix_value(smoothed_one_hot(k == labels[i], smoothing, num_classes),
                  smoothed_one_hot(k == labels[batch - 1 - i], smoothing, num_classes), lam, rest);
    targets[j] = binarize ? (mixed > 0.0f ? 1.0f : 0.0f) : mixed;
  }
}

}  // namespace

}  // namespace deit::kernels
