// The GPU augmentation stage (kernels/augment.h): a batch of variable-size uint8 source images and
// their per-sample AugmentParams -> the normalised (B, 3, S, S) float32 batch; then mixup / cutmix.
//
// What it fuses, per batch, in four launches on one stream (each sample works in its own scratch,
// laid out by scratch_layout and placed by plan_augment_cuda; the per-pixel steps of launches 1-3
// are in kernels/augment_fused.h, where a host test checks them without a GPU):
//   1. taps_kernel         grid (ceil(S / 128), 2 axes, B), 128 threads: one thread per output
//                          column (axis 0) or row (axis 1) computes its bicubic window and fixed-
//                          point weights. The crop geometry is folded in here: the
//                          RandomResizedCrop box, or Simple Random Crop's resize + reflect pad +
//                          crop (evaluation's resize + centre crop is the same with padding 0), and
//                          the flip, which only mirrors which column an output column reads.
//   2. resample_rows_kernel    grid (ceil(S*S / 256), B), 256 threads, grid-stride over the
//                          (source rows x S) values of the horizontal pass -> uint8 rows.
//   3. resample_columns_kernel same shape, over the S x S view: the vertical pass -> uint8 view.
//      Only the S columns and S rows the view keeps are ever resampled.
//   4. finish_kernel       one block of 1024 threads per sample: the 3-Augment op (grayscale,
//                          solarize, or the 6 box-blur passes between two buffers), the colour
//                          jitter in the sample's order (contrast's mean luma is a block reduction
//                          of integers, so exact and deterministic), then normalisation to float
//                          planes. __syncthreads() separates ops; each op reads the previous op's
//                          uint8 output, as Pillow does.
// Every value is computed by the functions of kernels/augment_arith.h that the CPU twin calls, in
// the same order, so the output is the CPU twin's bit for bit (tests/test_augment_cuda.cpp).
// mix_images_cuda / mix_targets_cuda: elementwise grid-stride kernels (256 threads).
//
// Output dtype: float32, the patch unfold's input (kernels/tokens.h), which casts to bf16 once.
// Mixup then blends the same float32 values the CPU reference blends, and the extra bytes are
// small: 0.6 MB per 224 px image, ~30 GB/s at 50,000 images/s, under 1% of an H200's bandwidth.
//
// measured: not yet run on a GPU (deit bench data --device cuda measures it).
#include <stdexcept>
#include <string>

#include "kernels/augment.h"
#include "kernels/augment_arith.h"
#include "kernels/augment_fused.h"
#include "kernels/cuda/common.cuh"

namespace deit::kernels {
namespace {

using namespace augment_arith;
using namespace augment_fused;

constexpr int kTapThreads = 128;
constexpr int kResampleThreads = 256;
constexpr int kFinishThreads = 1024;
constexpr int kMaxBatch = 65535;  // grid y / z limit

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

// One block per sample: 3-Augment, colour jitter, normalisation (see the top of the file).
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const SourceImage* sources, const AugmentParams* params, int size,
                  uint8_t* workspace, float* out) {
  __shared__ unsigned long long warp_sums[kFinishThreads / 32];
  const int b = blockIdx.x;
  const SampleView v = sample_view(sources, params, b, size, workspace);
  const AugmentParams& p = params[b];
  uint8_t* image = v.scratch + v.l.image;
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
      blur_view(image, v.scratch + v.l.spare, size, box_blur(p.blur_sigma));
      break;
  }
  __syncthreads();

  for (int j = 0; j < 3; ++j) {
    switch (p.jitter_order[j]) {
      case JitterOp::kBrightness:
        for (int i = threadIdx.x; i < n; i += blockDim.x)
          image[i] = blend(0, image[i], p.brightness);
        break;
      case JitterOp::kContrast: {
        unsigned long long luma_sum = 0;
        for (int q = threadIdx.x; q < pixels; q += blockDim.x)
          luma_sum += luma(image[q * 3], image[q * 3 + 1], image[q * 3 + 2]);
        const int grey = mean_grey(block_sum(luma_sum, warp_sums), pixels);
        for (int i = threadIdx.x; i < n; i += blockDim.x)
          image[i] = blend(grey, image[i], p.contrast);
        break;
      }
      case JitterOp::kSaturation:
        for (int q = threadIdx.x; q < pixels; q += blockDim.x) {
          uint8_t* px = image + q * 3;
          const uint8_t grey = luma(px[0], px[1], px[2]);
          for (int c = 0; c < 3; ++c) px[c] = blend(grey, px[c], p.saturation);
        }
        break;
    }
    __syncthreads();
  }

  // (size, size, 3) uint8 -> (3, size, size) float planes; consecutive threads write
  // consecutive floats.
  float* planes = out + static_cast<int64_t>(b) * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int c = i / pixels, q = i % pixels;
    planes[i] = normalize_value(image[q * 3 + c], c);
  }
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

int64_t plan_augment_cuda(SourceImage* sources, const AugmentParams* params, int64_t batch,
                          int size) {
  int64_t bytes = 0;
  for (int64_t i = 0; i < batch; ++i) {
    check_augment_params(params[i], sources[i].height, sources[i].width, size);
    sources[i].scratch_offset = bytes;
    bytes += sample_scratch_bytes(sources[i], params[i], size);
  }
  return bytes;
}

void augment_batch_cuda(const uint8_t* pixels, const SourceImage* sources,
                        const AugmentParams* params, int64_t batch, int size, float* out,
                        uint8_t* workspace, cudaStream_t stream) {
  gpu::check_sizes("augment_batch_cuda", {batch, size});
  if (batch > kMaxBatch)
    throw std::invalid_argument("augment_batch_cuda: at most " + std::to_string(kMaxBatch) +
                                " samples per call, got " + std::to_string(batch));
  if (batch == 0 || size == 0) return;
  const unsigned samples = static_cast<unsigned>(batch);
  taps_kernel<<<dim3(static_cast<unsigned>(gpu::ceil_div(size, kTapThreads)), 2, samples),
                kTapThreads, 0, stream>>>(sources, params, size, workspace);
  DEIT_CUDA_CHECK_LAUNCH();
  const dim3 resample_grid(gpu::grid_for(static_cast<int64_t>(size) * size, kResampleThreads),
                           samples);
  resample_rows_kernel<<<resample_grid, kResampleThreads, 0, stream>>>(pixels, sources, params,
                                                                       size, workspace);
  DEIT_CUDA_CHECK_LAUNCH();
  resample_columns_kernel<<<resample_grid, kResampleThreads, 0, stream>>>(sources, params, size,
                                                                          workspace);
  DEIT_CUDA_CHECK_LAUNCH();
  finish_kernel<<<samples, kFinishThreads, 0, stream>>>(sources, params, size, workspace, out);
  DEIT_CUDA_CHECK_LAUNCH();
}

void mix_images_cuda(const MixParams& p, float* images, int64_t batch, int channels, int height,
                     int width, cudaStream_t stream) {
  gpu::check_sizes("mix_images_cuda", {batch, channels, height, width});
  if (batch % 2 != 0)
    throw std::invalid_argument("augment: mixup/cutmix needs an even batch size, got " +
                                std::to_string(batch));
  if (p.lambda == 1.0 || batch == 0) return;
  if (p.cutmix) {
    const int64_t n = batch / 2 * channels * static_cast<int64_t>(p.y1 - p.y0) * (p.x1 - p.x0);
    if (n == 0) return;
    cutmix_kernel<<<gpu::grid_for(n, gpu::kThreads), gpu::kThreads, 0, stream>>>(
        images, batch, channels, height, width, p);
  } else {
    const int64_t sample = static_cast<int64_t>(channels) * height * width;
    mixup_kernel<<<gpu::grid_for(batch / 2 * sample, gpu::kThreads), gpu::kThreads, 0, stream>>>(
        images, batch, sample, static_cast<float>(p.lambda), static_cast<float>(1.0 - p.lambda));
  }
  DEIT_CUDA_CHECK_LAUNCH();
}

void mix_targets_cuda(const MixParams& p, const int32_t* labels, int64_t batch, int num_classes,
                      double smoothing, bool binarize, float* targets, cudaStream_t stream) {
  gpu::check_sizes("mix_targets_cuda", {batch, num_classes});
  if (batch == 0 || num_classes == 0) return;
  mix_targets_kernel<<<gpu::grid_for(batch * num_classes, gpu::kThreads), gpu::kThreads, 0,
                       stream>>>(labels, batch, num_classes, smoothing, binarize,
                                 static_cast<float>(p.lambda), static_cast<float>(1.0 - p.lambda),
                                 targets);
  DEIT_CUDA_CHECK_LAUNCH();
}

}  // namespace deit::kernels
