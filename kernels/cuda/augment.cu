// The GPU augmentation stage (kernels/augment.h): a batch of variable-size uint8 source images and
// their per-sample AugmentParams -> the normalised (B, 3, S, S) float32 batch; then mixup / cutmix.
//
// What it fuses, per batch, in five launches on one stream (each sample works in its own scratch,
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
//                          planes, unless the sample has RandAugment steps.
//   5. rand_augment_kernel the same blocks; those of samples with RandAugment steps apply them
//                          (autocontrast and equalize build per-channel histograms with
//                          shared-memory atomics, exact integer counts; sharpness and the affine
//                          ops write the spare buffer first), then normalise; the others return
//                          at once. Its own kernel: the steps take 64 registers a thread (and
//                          spill 32 bytes on sm_90, 8 on sm_80: the 1024-thread launch bound
//                          allows no more) where finish_kernel takes 32, so one kernel would
//                          run half as many threads per SM for pre-training's views too, which
//                          have no step.
//   __syncthreads() separates ops; each op reads the previous op's uint8 output, as Pillow does.
// Every value is computed by the functions of kernels/augment_arith.h that the CPU twin calls, in
// the same order, so the output is the CPU twin's bit for bit (tests/test_augment_cuda.cpp).
// mix_images_cuda / mix_targets_cuda: elementwise grid-stride kernels (256 threads).
//
// Output dtype: float32, the patch unfold's input (kernels/tokens.h), which casts to bf16 once.
// Mixup then blends the same float32 values the CPU reference blends, and the extra bytes are
// small: 0.6 MB per 224 px image, ~30 GB/s at 50,000 images/s, under 1% of an H200's bandwidth.
//
// Measured (one H200, 2026-12-04, commit 2868e8c, bench/results/2026-12-04-h200-gpu-check.md;
// `deit bench data --device cuda`, batch 256 from 256 x 341
// sources): the stage alone 140,387 images/s at 224 and 362,848 at 128, 187,102 at 224 with
// RandAugment in place of 3-Augment and jitter; the whole input path from shards 27,000 images/s,
// set by its 16 CPU workers.
//
// Files: the device code is kernels/cuda/augment_kernels.cuh, the launch arithmetic (block sizes,
// grids, scratch plan) kernels/cuda/augment_launch.h; this file is the host side (argument checks,
// launches). The kernels also run, lane by lane on the host, in the CTest entry augment_emulated
// (tests/emulated/augment_emulated.cpp), which checks them against the CPU twin without a GPU;
// its launches mirror the ones below, so change them together.
#include <stdexcept>
#include <string>

#include "kernels/augment.h"
#include "kernels/cuda/augment_launch.h"
#include "kernels/cuda/common.cuh"
// The device code, after what it uses.
#include "kernels/cuda/augment_kernels.cuh"

namespace deit::kernels {
namespace {

constexpr int kMaxBatch = 65535;  // grid y / z limit

}  // namespace

int64_t plan_augment_cuda(SourceImage* sources, const AugmentParams* params, int64_t batch,
                          int size) {
  return plan_augment_scratch(sources, params, batch, size);
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
  const AugmentGrids grids = augment_grids(size);
  taps_kernel<<<dim3(grids.taps, 2, samples), kTapThreads, 0, stream>>>(sources, params, size,
                                                                        workspace);
  DEIT_CUDA_CHECK_LAUNCH();
  const dim3 resample_grid(grids.resample, samples);
  resample_rows_kernel<<<resample_grid, kResampleThreads, 0, stream>>>(pixels, sources, params,
                                                                       size, workspace);
  DEIT_CUDA_CHECK_LAUNCH();
  resample_columns_kernel<<<resample_grid, kResampleThreads, 0, stream>>>(sources, params, size,
                                                                          workspace);
  DEIT_CUDA_CHECK_LAUNCH();
  finish_kernel<<<samples, kFinishThreads, 0, stream>>>(sources, params, size, workspace, out);
  DEIT_CUDA_CHECK_LAUNCH();
  rand_augment_kernel<<<samples, kFinishThreads, 0, stream>>>(sources, params, size, workspace,
                                                              out);
  DEIT_CUDA_CHECK_LAUNCH();
}

void mix_images_cuda(const MixParams& p, float* images, int64_t batch, int channels, int height,
                     int width, cudaStream_t stream) {
  gpu::check_sizes("mix_images_cuda", {batch, channels, height, width});
  if (batch % 2 != 0)
    throw std::invalid_argument("augment: mixup/cutmix needs an even batch size, got " +
                                std::to_string(batch));
  const int64_t n = mix_images_work(p, batch, channels, height, width);
  if (n == 0) return;
  if (p.cutmix) {
    cutmix_kernel<<<gpu::grid_for(n, gpu::kThreads), gpu::kThreads, 0, stream>>>(
        images, batch, channels, height, width, p);
  } else {
    const int64_t sample = static_cast<int64_t>(channels) * height * width;
    mixup_kernel<<<gpu::grid_for(n, gpu::kThreads), gpu::kThreads, 0, stream>>>(
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
